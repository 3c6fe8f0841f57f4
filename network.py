"""Whether the Hugging Face hub (or another host) can be reached, answered in seconds.

Without this, an offline machine waits on the libraries' retries (30 s and more for one model name) before their
error. Kept free of torch and transformers, so the answer comes before any heavy import.
"""

import os
import urllib.error
import urllib.request
from typing import Optional

PROBE_SECONDS = 4.0  # one HEAD request; an answer, even an error status, means the host is there
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_switch() -> Optional[str]:
    """The Hugging Face offline variable that is set (HF_HUB_OFFLINE=1 ...), if any."""
    for name in OFFLINE_SWITCHES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]}"
    return None


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> Optional[str]:
    """Why `url` cannot be reached now (no DNS, no route, no answer within `timeout`), or None when it answers.
    Goes through the proxies of the environment, as the download would."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the host answered; the download itself will say what is wrong
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"no answer from {url} ({reason or type(e).__name__})"


def hub_unreachable() -> Optional[str]:
    """Why the Hugging Face hub cannot be used now (an offline switch is set, or it does not answer), or None."""
    switch = offline_switch()
    return f"{switch} is set" if switch else unreachable(hub_endpoint())
