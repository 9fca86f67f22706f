"""bertserve's API core: the BertServer spec, the server flag contract, names, manifest builders.

Pure and standard-library only, so the operator image and the server image can both carry it
and every rule here is testable without a cluster or a model.
"""

__version__ = "0.1.0"
