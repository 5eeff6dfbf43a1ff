"""The small HTML pages a participant's browser opens from the unsubscribe link in their mail
(routes.py). They name no one and load nothing; the one form posts back to the same link."""

from __future__ import annotations

import html
import re

from aiohttp import web

# as services.common.http.HTML_POLICY, but the confirming page's form must post to this
# notifier ('self'); the link is not sent on to anywhere else (Referrer-Policy)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none';"
                               " form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_HEAR_AGAIN = ("tell your case manager, or turn celebrations on in your notification"
               " preferences.")


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title>\n<style>body{{font-family:sans-serif;"
            "line-height:1.5;max-width:40em;margin:2em auto;padding:0 1em}</style>\n"
            f"</head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
    return web.Response(status=status, text=text, content_type="text/html",
                        headers=PAGE_HEADERS)


def confirm() -> web.Response:
    """What a GET of the link shows: it changes nothing (link scanners fetch every link)."""
    return _page("Stop emails about your milestones?", (
        "<p>You asked to hear about your milestones, and we have been glad to celebrate them"
        " with you. If you would rather not get these emails, press the button.</p>\n"
        '<form method="post"><button type="submit">Stop these emails</button></form>\n'
        f"<p>You can hear about your milestones again at any time: {_HEAR_AGAIN}</p>"))


def already_off() -> web.Response:
    return _page("These emails are turned off", (
        "<p>Emails celebrating your milestones are turned off: you will not get them.</p>\n"
        f"<p>To hear about your milestones again, {_HEAR_AGAIN}</p>"))


def done() -> web.Response:
    return _page("You will not get these emails", (
        "<p>You will not get emails celebrating your milestones any more.</p>\n"
        f"<p>If you would like to hear about them again, {_HEAR_AGAIN}</p>"))


def not_valid() -> web.Response:
    return _page("This link is not valid", (
        "<p>This link is not valid. It may have been copied only in part, or it is no longer"
        " in use.</p>\n<p>To stop emails about your milestones, ask your case manager: they"
        " can arrange it for you.</p>"), status=404)


_RANGE = re.compile(r"\s*([\w.+*-]+)/([\w.+*-]+)\s*(.*)")
_QUALITY = re.compile(r";\s*q=(0(?:\.\d{0,3})?|1(?:\.0{0,3})?)\s*(?:;|$)", re.IGNORECASE)


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The media ranges of an Accept header with their weights (RFC 9110 §12.5.1); a range
    or a weight that does not parse is passed over."""
    found = []
    for item in accept.split(","):
        if not (match := _RANGE.fullmatch(item)):
            continue
        weight = _QUALITY.search(match[3])
        if weight is None and "q=" in match[3].lower():
            continue
        found.append((match[1].lower(), match[2].lower(), float(weight[1]) if weight else 1.0))
    return found


def _weight(ranges: list[tuple[str, str, float]], kind: str, subtype: str) -> float:
    """The weight of the most specific range that covers ``kind/subtype`` (0: none does)."""
    for wanted in ((kind, subtype), (kind, "*"), ("*", "*")):
        weights = [q for t, s, q in ranges if (t, s) == wanted]
        if weights:
            return max(weights)
    return 0.0


def prefers_html(accept: str) -> bool:
    """Whether a client ranks an HTML page above a problem body: a browser does (it names
    text/html, the rest only by */*); a mail provider's one-click POST, a script and a client
    sending no Accept get the problem."""
    ranges = _ranges(accept)
    return _weight(ranges, "text", "html") > _weight(ranges, "application", "problem+json")
