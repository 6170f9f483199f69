"""The live web dashboard (``pbt-actors dashboard``, ``run --dashboard``): layer 5, a face.

| module | job |
|---|---|
| ``index`` | ``StoreIndex``: a compact, incrementally refreshed copy of a store (read-only) |
| ``views`` | the JSON the page asks for, each bounded in size whatever the store's size |
| ``app`` | the Starlette app: routes, the refresher thread, the static files |
| ``server`` | bind rules (loopback unless told otherwise) and the uvicorn server |
| ``static/`` | the page (HTML, CSS, JS); plotly.js is served from the ``plotly`` package |

The store is opened read-only and never locked for writing; one thread refreshes the index
about once a second, reading only new trials and the few still active, so the dashboard costs
the controller nothing but LMDB reader slots.
"""
