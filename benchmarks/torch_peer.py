"""The transformers + PyTorch side of ``bench_model.py``, run inside its own virtual environment.

Commands: those of ``model_peer`` (``run`` takes ``"bf16": true`` for CPU autocast), and

    {"cmd": "export", "dir": "<HF model dir>", "out": "<model.onnx>"} -> {"ok": true, "exporter": ..}

which writes the ONNX graph the ONNX Runtime and OpenVINO peers run (``onnx_models.py``): this
model with the masked REDUCE_MEAN pooling inside, inputs ``input_ids``/``attention_mask``/
``token_type_ids`` (int64, dynamic batch and length), output ``pooled``. It is exported with
eager attention (explicit MatMul/Softmax), the pattern ``onnxruntime.transformers`` fuses into its
``Attention`` kernel, and with the TorchScript exporter where this PyTorch still has it (the
graphs that optimizer was written for), otherwise the dynamo exporter.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import transformers
from transformers import BertModel

from model_peer import Arrays, serve_model

ONNX_OPSET = 17  # LayerNormalization is a standard op from 17 on


class Pooled(torch.nn.Module):
    """The encoder and 1.10.0's masked REDUCE_MEAN over the last layer, as one module."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state.float()
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / (weights.sum(1) + 1e-10)


def load(request: dict[str, Any]) -> tuple[Any, int, dict[str, Any]]:
    torch.set_num_threads(int(request["threads"]))
    bert = BertModel.from_pretrained(request["dir"], add_pooling_layer=False).eval()
    return Pooled(bert), bert.config.vocab_size, {"attn": getattr(bert.config, "_attn_implementation", "?")}


def forward(model: Pooled, arrays: Arrays, request: dict[str, Any]) -> np.ndarray:
    ids, mask, types = (torch.from_numpy(a) for a in arrays)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=request.get("bf16", False)),
    ):
        return model(ids, mask, types).numpy()


def export(request: dict[str, Any]) -> dict[str, Any]:
    bert = BertModel.from_pretrained(request["dir"], add_pooling_layer=False, attn_implementation="eager")
    model = Pooled(bert.eval())
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in range(3))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"pooled": {0: "batch"}}
    try:
        torch.onnx.export(
            model, example, request["out"], input_names=names, output_names=["pooled"],
            dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
        exporter = "torchscript"
    except (TypeError, RuntimeError, ValueError) as exc:  # no TorchScript exporter in this PyTorch
        print(f"TorchScript ONNX export unavailable ({exc}); using the dynamo exporter", flush=True)
        torch.onnx.export(
            model, example, request["out"], input_names=names, output_names=["pooled"],
            dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=True, external_data=False,
        )  # fmt: skip
        exporter = "dynamo"
    return {"ok": True, "exporter": f"torch.onnx ({exporter}, opset {ONNX_OPSET})"}


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()  # the pooler weights we leave out are no news
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning, module="torch.onnx"
    )  # the legacy exporter is chosen
    serve_model(
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
        load=load,
        forward=forward,
        extra={"export": export},
    )
