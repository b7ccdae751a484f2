"""``emotrain serve``: a bundle behind HTTP (LitServe), with dynamic batching, limits, metrics and a page.

The server is a thin shell around the one path ``predict`` uses (:class:`emotrain.inference.predict.Predictor`):
each request's media are decoded on their own (``decode_request`` in an inference worker), the turns of
concurrent requests share the models' forward passes (LitServe's batching), and each request's turns are
calibrated and fused as ``predict`` fuses them. Modules:

- ``options``: the command's settings, checked (a non-loopback bind needs a key or ``--insecure``);
- ``worker``: the LitAPI that runs in each inference worker process (load, decode, batched forward);
- ``uploads``: a request's multipart body into a private temporary folder, within the size limits;
- ``metrics``: the Prometheus counters and histograms;
- ``app``: the LitServer, the ``/v1`` routes, the page, admission (bounded queue), timeouts, SIGTERM drain.
"""
