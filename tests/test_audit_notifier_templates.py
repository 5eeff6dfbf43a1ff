"""The mail as its reader gets it: a digest that counts in words, keeps each notice's whole
first sentence and says which case it is about, and an optional link to the plan."""

from __future__ import annotations

from datetime import UTC, date, datetime
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from services.notifier.settings import NotifierSettings
from services.notifier.templates import render, render_digest
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of

TODAY = date(2026, 5, 3)
OVERDUE = {"participant": "Jo", "review_id": "r", "due_date": "2026-05-01", "grace_days": 2,
           "case_manager": "cm-7"}
WIN = {"participant": "Jo", "step_id": "s", "description": "Call the landlord",
       "owner": "participant", "goal_title": "Keep my flat"}
PLAN_URL = "https://casetrail.example.org/plans/{case_id}?tab=plan&x=<y>"


@pytest.mark.parametrize(("count", "subject"), [(1, "Your Casetrail summary: 1 update"),
                                                (2, "Your Casetrail summary: 2 updates")])
def test_a_digest_counts_its_updates_in_words(count: int, subject: str) -> None:
    items = [render("small_win", WIN, uuid4(), today=TODAY) for _ in range(count)]
    assert render_digest(items).subject == subject


def test_a_digest_item_keeps_its_whole_first_paragraph_and_names_its_case() -> None:
    """The first line of a template is not the first sentence: an overdue notice lost the
    case manager's name, and no item said which case it was about."""
    case_id = uuid4()
    digest = render_digest([render("review_overdue", OVERDUE, case_id, today=TODAY)])
    assert "has not been recorded yet (case manager: cm-7)." in digest.text
    assert f"Case {case_id}" in digest.text
    assert '(case manager: <span dir="auto">cm-7</span>).' in digest.html
    assert f"Case {case_id}" in digest.html


def test_with_a_plan_url_staff_mail_links_to_the_plan() -> None:
    case_id = uuid4()
    rendered = render("small_win", WIN, case_id, today=TODAY, plan_url=PLAN_URL)
    url = f"https://casetrail.example.org/plans/{case_id}?tab=plan&x=<y>"
    assert f"Open Jo's plan: {url}" in rendered.text
    assert ('<a href="https://casetrail.example.org/plans/'
            f'{case_id}?tab=plan&amp;x=&lt;y&gt;">Open <span dir="auto">Jo</span>&#x27;s plan</a>'
            ) in rendered.html
    digest = render_digest([rendered])
    assert url in digest.text
    assert 'Open <span dir="auto">Jo</span>&#x27;s plan</a>' in digest.html


def test_without_a_plan_url_the_case_id_stays_the_reference() -> None:
    case_id = uuid4()
    rendered = render("small_win", WIN, case_id, today=TODAY)
    assert f"Case {case_id}" in rendered.text
    assert "<a " not in rendered.html


def test_a_participants_mail_carries_no_case_id_and_no_staff_link() -> None:
    case_id = uuid4()
    rendered = render("milestone", {"participant": "Jo", "goal_title": "Keep my flat"},
                      case_id, today=TODAY, for_participant=True, plan_url=PLAN_URL)
    assert str(case_id) not in rendered.text + rendered.html


@pytest.mark.parametrize("url", ["https://casetrail.example.org/plans/",
                                 "javascript:alert(1)//{case_id}",
                                 "https://casetrail.example.org/{case_id}/{case_id}",
                                 "https://casetrail.example.org/{case_id}/{other}",
                                 "https://casetrail.example.org/a b/{case_id}",
                                 "/plans/{case_id}"])
def test_a_plan_url_that_cannot_make_a_working_link_stops_the_notifier(url: str) -> None:
    with pytest.raises(ValidationError, match="NOTIFIER_PLAN_URL"):
        NotifierSettings.model_validate({"NOTIFIER_PLAN_URL": url})


@pytest.mark.parametrize("sender", ["Équipe, Nord <notices@example.org>",
                                    "notices", "Notices <notices@exämple.org>",
                                    "Notices <>", "a@b@example.org"])
def test_a_sender_mail_cannot_go_out_from_stops_the_notifier(sender: str) -> None:
    """An unquoted comma in the name left an envelope sender that is not an address (every
    send failed and, retried, became a dead letter); a non-ASCII domain cannot be an
    envelope sender at all."""
    with pytest.raises(ValidationError, match="NOTIFIER_FROM"):
        NotifierSettings.model_validate({"NOTIFIER_FROM": sender})


@pytest.mark.parametrize("sender", ['"Équipe, Nord" <notices@example.org>',
                                    "notices@example.org", "Casetrail <notices@casetrail.local>"])
def test_a_sender_with_a_quoted_or_no_name_is_kept_as_given(sender: str) -> None:
    assert NotifierSettings.model_validate({"NOTIFIER_FROM": sender}).mail_from == sender


def test_a_plan_url_is_optional_and_kept_as_given() -> None:
    assert NotifierSettings.model_validate({}).plan_url is None
    settings = NotifierSettings.model_validate({"NOTIFIER_PLAN_URL": PLAN_URL})
    assert settings.plan_url == PLAN_URL


async def test_a_supervisors_digest_says_whose_review_and_which_case(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Two participants called Jo, both reviews overdue: a supervisor reading the digest can
    tell them apart and knows whom to ask."""
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"), delivery="daily_digest")
    cm2 = Records(records.client, token(sub="cm-2"))
    cases = [await records.open_case(), await cm2.open_case("cm-2")]
    await records.agree(cases[0])
    await cm2.agree(cases[1])
    await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)  # overdue: due 1 May + 2 days
    await rig.dispatch()
    await rig.dispatch()  # the handed-on copies, into tomorrow's digest
    clock.now = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [digest] = smtp.to("sup-1@example.org")
    assert digest["Subject"] == "Your Casetrail summary: 2 updates"
    text = " ".join(text_of(digest).split())
    for case, manager in zip(cases, ("cm-1", "cm-2"), strict=True):
        assert f"(case manager: {manager}). Case {UUID(case)}" in text


async def test_a_nudge_speaks_to_whoever_took_the_step_on(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """A step the case manager took on is theirs to re-date with the participant: asking them
    to check in with the participant about "what support would help" misreads the plan."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Phone the housing office", owner="case_manager",
                       due_date="2026-03-01")
    await records.step(case, goal, "Drive Jo to the interview", owner="support",
                       support_name="Sam", due_date="2026-03-01")
    await records.step(case, goal, "Update my CV", due_date="2026-03-01")
    await rig.catch_up()
    await rig.dispatch()
    texts = {text.split('"')[1]: " ".join(text.split())
             for text in (text_of(m) for m in smtp.received)}
    assert "The case manager took this step on. Plans change, and that is fine: if the date" \
        " no longer fits, agree a new one with Jo." in texts["Phone the housing office"]
    assert "Sam, one of Jo's supports, took this step on. Plans change, and that is fine: a" \
        " quick check-in with Jo and Sam can show what would help" \
        in texts["Drive Jo to the interview"]
    assert "quick check-in with Jo can show what support would help" in texts["Update my CV"]
    assert "took this step on" not in texts["Update my CV"]


def test_a_right_to_left_name_is_set_apart_and_free_text_is_escaped_in_html() -> None:
    """An Arabic or Hebrew name inside an English sentence took the words after it ("'s plan
    review") into its own direction; each value from the record is isolated (dir="auto")."""
    context = {**OVERDUE, "participant": "محمد", "case_manager": "cm-7 & <b>"}
    rendered = render("review_overdue", context, uuid4(), today=TODAY)
    assert 'with <span dir="auto">محمد</span> was due' in rendered.html
    assert '<span dir="auto">cm-7 &amp; &lt;b&gt;</span>' in rendered.html
    assert "<b>" not in rendered.html
    assert "محمد" in rendered.text
    assert 'dir="auto"' not in rendered.text
    assert "src=" not in rendered.html  # nothing to fetch
    assert "http" not in rendered.html
