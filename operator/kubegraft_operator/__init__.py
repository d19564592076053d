"""kubegraft's Kubernetes operator: turns each TransferJob into a batch/v1 Job running the trainer.

Layout (read top to bottom): `main` (kopf handlers only) -> `reconcile` (observe, plan, act, report) ->
`planning` and `rendering` and `conditions` (pure functions) -> `kube` (the one API caller). `config` holds
the operator's own settings, `metrics` its Prometheus series, `progress_client` the trainer's
/progress reader, `errors` the translation of API failures into kopf's retry vocabulary.

This package never imports TensorFlow, Keras or the trainer package.
"""
