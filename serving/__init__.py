"""fsjax.serving: a thin Flask layer that runs fsjax experiments over real HTTP.

The repository folder ``serving/`` installs as the package ``fsjax.serving``
(pyproject.toml's ``package-dir``); import it under that name. It uses the
library (``fsjax.runs``, ``fsjax.simulation``, ``fsjax.backends``...) and is
used only by the ``serve | client | launch`` commands of :mod:`fsjax.cli`.

- :mod:`fsjax.serving.server`: the server's Flask app and round coordinator;
- :mod:`fsjax.serving.client`: one client process's app and its training;
- :mod:`fsjax.serving.wire`: the msgpack wire format;
- :mod:`fsjax.serving.web`: HTTP plumbing (errors, tokens, ``requests`` calls);
- :mod:`fsjax.serving.auth`: enrolment tokens, client credentials, signatures;
- :mod:`fsjax.serving.httpserver`: the HTTP(S) server (uvicorn) and its limits;
- :mod:`fsjax.serving.launch`: ``fsjax serve | client | launch`` as processes.
"""
