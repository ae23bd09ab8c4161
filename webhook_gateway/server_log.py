"""aiohttp's own refusals (a malformed request line or header) as counted, summarised lines.

aiohttp answers such a request 400 itself and logs it on `aiohttp.server` at ERROR with a
traceback, one line each: whoever sends garbage would choose the log volume. This filter counts
each one (`webhook_verification_failures_total{reason="bad_http"}`) and hands it to the
RefusalLog instead; other aiohttp.server records pass unchanged.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from entitlements_common.refusals import RefusalLog
from webhook_gateway.metrics import GatewayMetrics

server_logger = logging.getLogger("aiohttp.server")


class ParserRefusals(logging.Filter):
    def __init__(self, metrics: GatewayMetrics, refusals: RefusalLog) -> None:
        super().__init__()
        self._metrics = metrics
        self._refusals = refusals

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self._metrics.verification_failures.labels(reason="bad_http").inc()
        self._refusals.refused("bad_http", "malformed HTTP request")
        return False
