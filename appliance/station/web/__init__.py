"""``neopain station``: the central station as a web page.

``server`` (the command and its wiring) -> ``ingest`` (broker -> ``Board`` -> ``history`` -> confirmations and
``live`` updates) and ``app`` (FastAPI pages: ``view`` per bed, ``chart`` per bed page, ``commands`` for ratings,
``auth`` for users and sessions); ``bands`` and ``nips_items`` hold what nurses read (the NIPS bands, the items'
words); ``templates/`` and ``static/`` are the pages themselves (no external resources, no CDN).
"""
