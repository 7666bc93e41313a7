"""Stratified serving: a cascade of exported tiers, a lean one answering most requests and a big one only
the hard ones, with the estimated joules of every request; and the ASGI app that serves it.

    config.py     the cascade file (tiers, calibration goal, serving settings), validated
    pricing.py    each tier's estimated joules by the path a request takes through it
    record.py     the calibration file beside the cascade
    cascade.py    a calibrated cascade: predict() escalates unconfident inputs tier by tier
    calibrate.py  thresholds (the early exits' rule and margin) and price tables, on held-out data
    evaluate.py   the cascade beside each tier alone on the test split
    batching.py   dynamic batching with bounded admission (overload -> 503) and cancellation
    metrics.py    the Prometheus metrics
    app.py        the FastAPI app: /v1/predict, /v1/embeddings, /health, /metrics
    server.py     `wattless serve`: the app under uvicorn
"""

from wattless.serve.calibrate import calibrate
from wattless.serve.cascade import Cascade, Prediction, load_cascade
from wattless.serve.config import CascadeSpec, ServeSettings, TierSpec, calibration_path, load_cascade_spec, write_cascade_spec
from wattless.serve.evaluate import evaluate

__all__ = ["calibrate", "evaluate", "Cascade", "Prediction", "load_cascade", "CascadeSpec", "TierSpec",
           "ServeSettings", "calibration_path", "load_cascade_spec", "write_cascade_spec"]
