"""Kit of the `firecrest` driver on API v1: the FirecREST kit (tests/kits/firecrest.py) on the
session's local FirecREST service speaking v1 (fixture `firecrest_v1_service`)."""
from __future__ import annotations

from kits.firecrest import FirecrestKit

KIT = FirecrestKit("firecrest_v1", "v1")
KIT.control_characters = False
