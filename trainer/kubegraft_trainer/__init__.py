"""kubegraft's trainer: a TransferJob spec in, a published model version out.

Modules, in the order a run uses them: `run` (entry point) -> `dataset`, `pipeline`, `sources` (data) ->
`backbones`, `model` (network) -> `stages`, `checkpoints` (training) -> `report`, `export` (results), with
`storage`, `progress` and `errors` beside them; `predict` reads published versions. This package never imports
kubernetes or kopf.
"""
