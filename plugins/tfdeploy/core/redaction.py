"""Redaction: secrets out of any text or JSON-like data before it leaves the machine (diagnosis bundles).

Two kinds of rules, both applied to every text:
 - **known values** (``secrets``: tokens, passwords, keys, Connection URIs, as configured): each occurrence is
   replaced. A value of ``LITERAL_MIN`` (8) characters or more is replaced wherever it occurs, even inside a
   longer word; a shorter one (a weak password such as ``admin``) only where it stands as a whole word, since
   as a substring it would be found in ordinary words; values under ``SHORT_MIN`` (4) characters are ignored
   (they cannot be told from ordinary text: don't use them as secrets);
 - **patterns**, for secrets whose value is not known here: ``Authorization: <scheme> <credentials>`` and any
   ``Bearer <token>``, JSON Web Tokens (``eyJ...``), the password of a URI's user info
   (``scheme://user:<password>@host``), and ``key=value`` / ``key: value`` / ``"key": "value"`` where the key
   names a secret (``password``, ``passwd``, ``secret``, ``token``, ``api_key``, ``fernet_key``, ``jwt``,
   ``credential``, ``private_key``, ``cookie``, ``authorization``: any key containing one of them).

:meth:`Redactor.redact_data` walks JSON-like data instead: a value under a secret-naming key is replaced
whole, every string goes through :meth:`Redactor.redact_text`, so the result still serializes to valid JSON.
What replaces a secret is ``[REDACTED]``; nothing says which secret it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
LITERAL_MIN = 8
SHORT_MIN = 4

# A key (env name, JSON key, query or form field) that names a secret.
SECRET_KEY = re.compile(
    r"passw|passwd|pwd|secret|token|api[_-]?key|apikey|fernet|jwt|credential|private[_-]?key|cookie|authorization",
    re.IGNORECASE,
)
_KEY_CHARS = r"[A-Za-z0-9_.\-]*"
_KEY_WORDS = (
    r"(?:passw\w*|passwd|pwd|secret|token|api[_-]?key|apikey|fernet[_-]?key|jwt\w*|credentials?|private[_-]?key)"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer|Basic|Token <credentials> (header lines, curl -H, logged requests)
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(\w+\s+)?[^\s\"',;]+"), r"\1\2" + REDACTED),
    # a bearer token anywhere
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]+"), r"\1" + REDACTED),
    # JSON Web Tokens: header.payload.signature, each base64url; the header always starts {" -> eyJ
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED),
    # scheme://user:password@host
    (re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@\"']*:)[^@/\s\"']+@"), r"\1" + REDACTED + "@"),
    # "key": "value", key="value", key: 'value' (JSON, Python reprs, quoted config and command-line values)
    (
        re.compile(
            rf"(?i)([\"']?\b{_KEY_CHARS}{_KEY_WORDS}{_KEY_CHARS}[\"']?\s*[=:]\s*([\"']))(?!\[REDACTED\])(?:\\.|[^\\\n])*?\2"
        ),
        r"\1" + REDACTED + r"\2",
    ),
    # key=value, key: value (env lines, query strings, command lines, config files, log lines)
    (
        re.compile(
            rf"(?i)(\b{_KEY_CHARS}{_KEY_WORDS}{_KEY_CHARS}\s*[=:]\s*)(?![\[\"'\s{{]|null\b|none\b)[^\s,;&\"'}}]+"
        ),
        r"\1" + REDACTED,
    ),
)


class Redactor:
    """Replaces the given secret values and the secret patterns (module docstring) with ``[REDACTED]``.

    :param secrets: the secret values known here (empty and too short ones are ignored).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {str(s).strip() for s in secrets if s is not None}
        values = {v for v in values if len(v) >= SHORT_MIN}
        self.secrets: tuple[str, ...] = tuple(sorted(values, key=lambda v: (-len(v), v)))
        long_ = [re.escape(v) for v in self.secrets if len(v) >= LITERAL_MIN]
        short = [re.escape(v) for v in self.secrets if len(v) < LITERAL_MIN]
        alternatives = []
        if long_:
            alternatives.append("|".join(long_))
        if short:
            alternatives.append(r"(?<![A-Za-z0-9_])(?:" + "|".join(short) + r")(?![A-Za-z0-9_])")
        self._known = re.compile("|".join(f"(?:{a})" for a in alternatives)) if alternatives else None

    def __len__(self) -> int:
        return len(self.secrets)

    def redact_known(self, text: str) -> str:
        """Only the known values (safe inside any serialized format: a string stays a string)."""
        return self._known.sub(REDACTED, text) if self._known is not None else text

    def redact_text(self, text: str) -> str:
        """The known values, then the patterns."""
        out = self.redact_known(text)
        for pattern, replacement in _PATTERNS:
            out = pattern.sub(replacement, out)
        return out

    __call__ = redact_text

    def redact_data(self, data: Any) -> Any:
        """A copy of JSON-like ``data`` (dicts, lists, strings, numbers): values under a secret-naming key replaced
        whole (``null`` and empty values kept, as they hide nothing), every other string through
        :meth:`redact_text`."""
        if isinstance(data, dict):
            return {
                str(key): (
                    REDACTED
                    if SECRET_KEY.search(str(key)) and value not in (None, "", [], {})
                    else self.redact_data(value)
                )
                for key, value in data.items()
            }
        if isinstance(data, list | tuple):
            return [self.redact_data(item) for item in data]
        if isinstance(data, str):
            return self.redact_text(data)
        return data
