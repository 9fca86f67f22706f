"""Child names stay valid DNS labels, deterministic and unique."""

from __future__ import annotations

from bertserve_api import names


def test_short_names_are_kept_verbatim():
    assert names.child_name("mrpc") == "mrpc"
    assert names.child_name("mrpc", "gateway") == "mrpc-gateway"


def test_long_names_are_cut_to_63_with_a_hash_and_stay_unique():
    a = "a" * 70 + "-one"
    b = "a" * 70 + "-two"
    na, nb = names.child_name(a, "peers"), names.child_name(b, "peers")
    assert len(na) <= 63 and len(nb) <= 63
    assert na != nb
    assert na.endswith("-peers-" + na.rsplit("-", 1)[1])
    assert names.child_name(a, "peers") == na  # deterministic
    assert names.is_dns_label(na) and names.is_dns_label(nb)


def test_boundary_length_is_not_hashed():
    owner = "b" * 57
    assert names.child_name(owner, "peers") == f"{owner}-peers"  # exactly 63


def test_label_values_are_bounded():
    value = names.label_value("x" * 100)
    assert len(value) == 63
    assert names.label_value("x" * 100) != names.label_value("x" * 99 + "y")


def test_selector_string_is_sorted_and_parsable():
    selector = names.selector_string(names.selector_labels("mrpc"))
    assert selector == (
        "app.kubernetes.io/component=encoder,app.kubernetes.io/instance=mrpc,app.kubernetes.io/name=bertserve"
    )


def test_api_coordinates():
    assert names.API_VERSION == "bertserve.io/v1alpha1"
    assert names.CRD_NAME == "bertservers.bertserve.io"
