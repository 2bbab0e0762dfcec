"""The web app's routes, one FastAPI ``APIRouter`` per area.

``pages`` (HTML pages and static files), ``info`` (``/api/health``, ``/api/info``),
``predict`` (``/api/preview``, ``/api/predict``, ``/api/heatmap``, ``/api/report``) and
``study`` (the reader study under ``/api/study``). They share one
:class:`~buscad.serve.routes.state.AppState` on ``app.state.buscad`` through the
:func:`~buscad.serve.routes.state.get_state` dependency. To add a route, put it in the
router of its area (or a new module with its own ``router``) and include that router in
:func:`buscad.serve.app.create_app`; the OpenAPI test pins every operation.
"""
