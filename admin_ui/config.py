"""The admin's one place for configuration: where the childface API is.

The admin is a separate program (it talks to the API over HTTP like any other
client), so it reads its own environment: `CHILDFACE_API_URL`, set by
`childface admin` from the server's settings.
"""

from __future__ import annotations

import os

API_URL = os.environ.get("CHILDFACE_API_URL", "http://127.0.0.1:8000").rstrip("/")
#: seconds to wait for the API; enrolling a batch of photos on a CPU takes a few seconds
TIMEOUT_S = 120.0
