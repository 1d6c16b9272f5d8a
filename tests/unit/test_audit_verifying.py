"""The trail verifier on trails built in memory: every check, what it reports and where.

Each test takes a trail that verifies, changes one thing the way a forger (or a lost upload)
would, and compares the whole list of problems with what an auditor must be told. The
spool-and-export path that writes real trails is tested in tests/integration/test_audit_*.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidegate.audit import digests, events, signing, verifying
from tests.helpers.trails import INTERVAL, START, TRAIL, Built, build, sign_digest


def verify(
    files: verifying.TrailFiles | Built,
    trail: str | None = None,
    *,
    now: float = START + 10,
    trusted: dict[str, ed25519.Ed25519PublicKey] | None = None,
) -> verifying.Report:
    if isinstance(files, Built):
        files = files.files()
    return verifying.verify_trail(trail, files, trusted_keys=trusted, now=now)


def problems(report: verifying.Report) -> list[str]:
    assert all(type(p.line) is int for p in report.problems)  # 0 for a file as a whole
    return [str(p) for p in report.problems]


def seg(built: Built, index: int) -> str:
    return built.segments[index][0]


def dig(built: Built, index: int) -> str:
    return built.digests[index][0]


def test_an_untouched_trail_verifies_and_is_counted() -> None:
    built = build((3, 2), idle=True)
    report = verify(built)
    assert problems(report) == []
    assert report.ok and report.checks() == set()
    assert report.trail == TRAIL  # read from the first digest
    assert (report.segments, report.events, report.digests) == (2, 5, 3)
    assert report.keys == [built.signer.key_id]
    assert report.keys_trusted == "published in the trail"
    first, last = built.event(0, 0), built.event(1, 1)
    assert (report.first_id, report.last_id) == (first["id"], last["id"])


def test_problems_read_as_check_place_and_line() -> None:
    assert str(verifying.Problem("event", "a/b.jsonl", 3, "bad")) == "[event] a/b.jsonl:3: bad"
    assert str(verifying.Problem("key", "a/k.pem", 0, "bad")) == "[key] a/k.pem: bad"
    report = verifying.Report("t")
    assert report.ok
    report.add("tail", "x", 0, "late")
    assert not report.ok and report.checks() == {"tail"}
    assert report.problems == [verifying.Problem("tail", "x", 0, "late")]


def test_only_the_given_keys_verify_when_keys_are_given() -> None:
    built = build((2,))
    other = signing.Signer()
    report = verify(built, trusted={other.key_id: other.public_key})
    assert report.keys_trusted == "given (--public-key)"
    assert problems(report) == [
        f"[signature] {dig(built, 0)}: signed by key {built.signer.key_id}, which is not trusted"
    ]
    mine = verify(built, trusted={built.signer.key_id: built.signer.public_key})
    assert problems(mine) == [] and mine.keys_trusted == "given (--public-key)"
    # the published key is not used once keys are given
    assert verify(built, trusted={}).checks() == {"signature"}


def test_a_published_key_must_be_an_ed25519_key_under_its_own_name() -> None:
    built = build((2,))
    other = signing.Signer()
    pem = built.keys[0][1]
    built.keys = [
        ("spool/key-0000000000000000.pem", pem),
        (f"spool/{digests.key_file_name(other.key_id)}.gz", b"garbage"),
    ]
    report = verify(built)
    assert problems(report) == [
        f"[key] spool/key-0000000000000000.pem: holds key {built.signer.key_id}, "
        "not the one its name says",
        f"[key] spool/key-{other.key_id}.pem.gz: not an Ed25519 public key in PEM",
        f"[signature] {dig(built, 0)}: signed by key {built.signer.key_id}, which is not trusted",
    ]
    assert [p.line for p in report.problems] == [0, 0, 0]  # about the files as a whole
    # a bad key file does not stop the ones after it from being read
    for bad in (("spool/key-0000000000000000.pem", pem), ("spool/key-x.pem", b"garbage")):
        built.keys = [bad, (f"spool/{digests.key_file_name(built.signer.key_id)}", pem)]
        assert verify(built).checks() == {"key"}
    # a compressed key file is named by its name without .gz
    built.keys = [(f"spool/{digests.key_file_name(built.signer.key_id)}.gz", pem)]
    assert problems(verify(built)) == []


def test_an_altered_digest_fails_its_signature() -> None:
    built = build((3, 2))
    where, data = built.digests[1]
    document = json.loads(data)
    document["final"] = False
    built.digests[1] = (where, events.canonical(document) + b"\n")
    assert problems(verify(built)) == [
        f"[signature] {where}: signature does not verify: the digest was altered"
    ]


def test_a_digest_of_another_trail_is_named() -> None:
    built = build((2,))
    report = verify(built, "team-a/pod-1")
    assert report.trail == "team-a/pod-1"
    assert problems(report) == [
        f"[trail] {dig(built, 0)}: a digest of {TRAIL}, not of team-a/pod-1"
    ]


def test_a_missing_digest_leaves_its_segment_uncovered() -> None:
    built = build((3, 2))
    del built.digests[0]
    assert problems(verify(built)) == [
        f"[digest-chain] {dig(built, 0)}: digests 0..0 are missing",
        f"[sequence] {dig(built, 0)}: covers events from 4, but the digests before it end at 0",
        f"[coverage] {seg(built, 0)}: no signed digest covers this segment",
    ]


def test_several_missing_digests_are_named_as_a_range() -> None:
    built = build((1, 1, 1, 1), final=True)
    del built.digests[1:3]
    assert problems(verify(built)) == [
        f"[digest-chain] {dig(built, 1)}: digests 1..2 are missing",
        f"[sequence] {dig(built, 1)}: covers events from 4, but the digests before it end at 1",
        f"[coverage] {seg(built, 1)}: no signed digest covers this segment",
        f"[coverage] {seg(built, 2)}: no signed digest covers this segment",
    ]


def test_the_same_digest_found_twice_counts_once() -> None:
    built = build((3, 2))
    built.digests.append(("spool/sealed/" + digests.file_name(1), built.digests[1][1]))
    built.digests.append(("spool/sealed/" + digests.file_name(0), built.digests[0][1]))
    report = verify(built)
    assert problems(report) == [] and report.digests == 2


def test_a_second_different_digest_with_the_same_number_is_named() -> None:
    built = build((3, 2), final=False)
    second = sign_digest(
        built.signer, 1, digests.file_hash(built.digests[0][1]), 5, None, final=True
    )
    built.digests.append(("spool/other/" + digests.file_name(1), second))
    report = verify(built)
    assert report.digests == 3
    assert problems(report) == [
        f"[digest-chain] spool/other/{digests.file_name(1)}: a second, different digest 1",
    ]


def test_of_two_digests_with_one_number_the_later_location_is_the_second() -> None:
    built = build((3, 2), final=False)
    second = sign_digest(
        built.signer, 1, digests.file_hash(built.digests[0][1]), 5, None, final=True
    )
    built.digests.append(("spool/a-copy/" + digests.file_name(1), second))
    # spool/a-copy sorts first: it is digest 1, and the one in spool/digests the second
    assert problems(verify(built)) == [
        f"[sequence] spool/a-copy/{digests.file_name(1)}: says 5 events, not 3",
        f"[digest-chain] {dig(built, 1)}: a second, different digest 1",
    ]


def test_the_tail_is_judged_by_the_clock_when_no_time_is_given() -> None:
    assert problems(verifying.verify_trail(None, build((2,), final=True).files())) == []
    late = verifying.verify_trail(None, build((2,), final=False).files())
    assert late.checks() == {"tail"}  # START is in the past


def test_digest_times_are_utc_whatever_the_local_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = build((3, 2), final=False)
    limit = START + 1 + 2 * INTERVAL + 5
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert problems(verify(built, now=limit)) == []
        assert verify(built, now=limit + 1).checks() == {"tail"}
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_digest_that_does_not_name_the_one_before_is_named() -> None:
    built = build((3, 2))
    where, _ = built.digests[1]
    summary = digests.summarize(seg(built, 1).rsplit("/", 1)[1], built.segments[1][1])
    built.digests[1] = (where, sign_digest(built.signer, 1, "f" * 64, 5, summary, final=True))
    assert problems(verify(built)) == [
        f"[digest-chain] {where}: does not name the digest before it: "
        "a digest was replaced or reordered"
    ]


def test_the_first_digest_must_name_the_genesis() -> None:
    built = build((2,))
    summary = digests.summarize(seg(built, 0).rsplit("/", 1)[1], built.segments[0][1])
    built.digests[0] = (dig(built, 0), sign_digest(built.signer, 0, "1" * 64, 2, summary))
    assert verify(built).checks() == {"digest-chain"}


def test_an_idle_digest_must_count_the_events_covered_so_far() -> None:
    built = build((3,), idle=True)
    where = dig(built, 1)
    previous = digests.file_hash(built.digests[0][1])
    built.digests[1] = (where, sign_digest(built.signer, 1, previous, 2, None, final=True))
    assert problems(verify(built)) == [f"[sequence] {where}: says 2 events, not 3"]


def test_a_segment_covered_twice_is_named() -> None:
    built = build((3,))
    summary = digests.summarize(seg(built, 0).rsplit("/", 1)[1], built.segments[0][1])
    previous = digests.file_hash(built.digests[0][1])
    again = sign_digest(built.signer, 1, previous, 3, summary, final=True)
    built.digests.append(("spool/digests/" + digests.file_name(1), again))
    name = summary.name
    assert problems(verify(built)) == [
        f"[sequence] {dig(built, 1)}: covers events from 1, but the digests before it end at 3",
        f"[coverage] {dig(built, 1)}: {name} is covered twice",
    ]


def test_a_segment_a_digest_names_must_be_there() -> None:
    built = build((3, 2))
    name = seg(built, 1).rsplit("/", 1)[1]
    del built.segments[1]
    assert problems(verify(built)) == [
        f"[coverage] {dig(built, 1)}: covers {name}, which is missing"
    ]


def test_segments_without_any_digest() -> None:
    built = build((2,))
    built.digests = []
    assert problems(verify(built)) == [
        f"[coverage] {seg(built, 0)}: no signed digest covers this segment",
        "[coverage] trail: no signed digests at all",
    ]
    assert problems(verify(built, TRAIL))[-1] == f"[coverage] {TRAIL}: no signed digests at all"
    assert problems(verify(verifying.TrailFiles())) == []


def test_a_digest_that_is_not_a_digest_is_named() -> None:
    built = build((2,))
    built.digests.append(("spool/digests/digest-000000000009.json", b'{"version": 1}'))
    report = verify(built)
    assert problems(report) == [
        "[digest-chain] spool/digests/digest-000000000009.json: "
        "not a valid digest (trail: Field required)"
    ]
    assert report.digests == 1
    assert report.problems[0].line == 0
    # a nested field is named by its path
    document = json.loads(built.digests[0][1])
    document["segment"] = {}
    built.digests[-1] = (built.digests[-1][0], json.dumps(document).encode())
    assert problems(verify(built))[0] == (
        "[digest-chain] spool/digests/digest-000000000009.json: "
        "not a valid digest (segment.name: Field required)"
    )


def test_the_tail_is_missing_once_the_last_digest_is_two_intervals_and_the_slack_old() -> None:
    built = build((3, 2), final=False)
    created = START + 1  # the last digest's
    limit = created + 2 * INTERVAL + 5
    assert problems(verify(built, now=limit)) == []
    assert problems(verify(built, now=limit + 0.5)) == [
        f"[tail] {dig(built, 1)}: the last digest (1, {events.rfc3339(created)}) is not final "
        "and 126 s old, more than twice its 60 s interval: the trail's tail is missing, "
        "or its sidecar stopped without closing it"
    ]
    final = build((3, 2), final=True)
    assert problems(verify(final, now=limit + 10_000)) == []


def test_an_edited_segment_fails_its_signed_hash_and_the_event_its_own() -> None:
    built = build((3, 2))
    lines = built.segment_lines(0)
    event = json.loads(lines[1])
    event["outcome"]["result"] = "denied"
    lines[1] = events.canonical(event) + b"\n"
    built.replace_segment(0, lines)
    where = seg(built, 0)
    assert problems(verify(built)) == [
        f"[segment-hash] {where}: differs from the SHA-256 signed in {dig(built, 0)}: "
        "events were edited, removed, reordered or appended",
        f"[event-hash] {where}:2: hash does not match the content: altered",
    ]


def test_removed_events_break_the_sequence_and_the_chain() -> None:
    built = build((4,))
    lines = built.segment_lines(0)
    del lines[1:3]
    built.replace_segment(0, lines)
    where = seg(built, 0)
    assert problems(verify(built))[1:] == [
        f"[sequence] {where}:2: sequence 4 follows 1: events missing",
        f"[event-chain] {where}:2: gap: prev_hash does not match the previous event "
        "(events missing)",
    ]


def test_reordered_events_are_named_out_of_order() -> None:
    built = build((3,))
    lines = built.segment_lines(0)
    lines[1], lines[2] = lines[2], lines[1]
    built.replace_segment(0, lines)
    first, second, third = (built.event(0, i) for i in range(3))
    where = seg(built, 0)
    assert problems(verify(built))[1:] == [
        f"[sequence] {where}:2: sequence 3 follows 1: events missing",
        f"[event-chain] {where}:2: gap: prev_hash does not match the previous event "
        "(events missing)",
        f"[sequence] {where}:3: sequence 2 follows 3: events out of order",
        f"[event-chain] {where}:3: out of order: links to {where}:1, not to the line before",
        f"[event-chain] {where}:3: id {third['id']} does not sort after {second['id']}",
    ]
    assert first["sequence"] == 1


def test_an_event_repeated_is_out_of_order_not_missing() -> None:
    built = build((3,))
    lines = built.segment_lines(0)
    built.replace_segment(0, [lines[0], lines[1], lines[1], lines[2]])
    second = built.event(0, 1)
    where = seg(built, 0)
    assert problems(verify(built))[1:] == [
        f"[sequence] {where}:3: sequence 2 follows 2: events out of order",
        f"[event-chain] {where}:3: out of order: links to {where}:1, not to the line before",
        f"[event-chain] {where}:3: id {second['id']} does not sort after {second['id']}",
    ]


def test_the_first_event_of_a_trail_links_to_the_genesis() -> None:
    built = build((2,))
    lines = built.segment_lines(0)
    event = json.loads(lines[0])
    event["prev_hash"] = "1" * 64
    line, _ = events.sealed_line({k: v for k, v in event.items() if k != "hash"})
    built.replace_segment(0, [line, *lines[1:]])
    where = seg(built, 0)
    assert problems(verify(built))[1:] == [
        f"[event-chain] {where}:1: the first event links to another",
        f"[event-chain] {where}:2: gap: prev_hash does not match the previous event "
        "(events missing)",
    ]


def test_a_trail_that_starts_later_may_link_anywhere() -> None:
    """Segments before the first one kept (expired, by retention) are not required: the first
    event read need not be sequence 1, nor link to the genesis."""
    built = build((2, 2))
    del built.segments[0]
    del built.digests[0]
    report = verify(built)
    assert "event-chain" not in report.checks() and "event-hash" not in report.checks()


def test_lines_that_are_not_events_are_named_and_the_chain_resumes_after_them() -> None:
    built = build((3,))
    lines = built.segment_lines(0)
    lines[1] = b"not json\n"
    built.replace_segment(0, lines)
    where = seg(built, 0)
    found = problems(verify(built))
    assert found[1].startswith(f"[event] {where}:2: not a valid audit event (")
    assert found[2:] == [f"[sequence] {where}:3: sequence 3 follows 1: events missing"]
    lines[1] = b'{"version": 2}\n'
    built.replace_segment(0, lines)
    assert problems(verify(built))[1] == (
        f"[event] {where}:2: not a valid audit event (id: Field required)"
    )


def test_an_event_with_an_id_that_does_not_sort_later_is_named() -> None:
    built = build((2,))
    lines = built.segment_lines(0)
    first = json.loads(lines[0])
    second = json.loads(lines[1])
    second["id"] = first["id"]
    line, _ = events.sealed_line({k: v for k, v in second.items() if k != "hash"})
    built.replace_segment(0, [lines[0], line])
    where = seg(built, 0)
    assert problems(verify(built))[1:] == [
        f"[event-chain] {where}:2: id {first['id']} does not sort after {first['id']}"
    ]


def test_segments_are_read_in_name_order_across_directories() -> None:
    built = build((2, 2, 2))
    built.segments.reverse()
    built.segments[0] = ("a/" + built.segments[0][0], built.segments[0][1])
    report = verify(built)
    assert problems(report) == [] and report.events == 6


def test_directory_files_reads_one_trail_once_and_decompresses(tmp_path: Path) -> None:
    built = build((2, 2))
    for where, data in [*built.segments, *built.digests, *built.keys]:
        path = tmp_path / where
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # the same segment compressed elsewhere, a digest copied beside the segments
    (tmp_path / "export").mkdir()
    name = seg(built, 0).rsplit("/", 1)[1]
    (tmp_path / "export" / (name + ".gz")).write_bytes(gzip.compress(built.segments[0][1]))
    (tmp_path / "spool" / "sealed" / digests.file_name(1)).write_bytes(built.digests[1][1])
    (tmp_path / "spool" / "notes.txt").write_bytes(b"not part of a trail")
    files = verifying.directory_files(tmp_path)
    assert [w for w, _ in files.segments] == [
        str(tmp_path / "export" / (name + ".gz")),
        str(tmp_path / seg(built, 1)),
    ]
    assert [d for _, d in files.segments] == [d for _, d in built.segments]
    assert [w for w, _ in files.digests] == [str(tmp_path / w) for w, _ in built.digests]
    assert [w for w, _ in files.keys] == [str(tmp_path / built.keys[0][0])]
    assert problems(verifying.verify_trail(None, files, now=START + 10)) == []
    # a different copy under the same name is kept, and caught
    (tmp_path / "spool" / "sealed" / digests.file_name(1)).write_bytes(built.digests[0][1])
    assert len(verifying.directory_files(tmp_path).digests) == 3


def test_load_keys_names_each_key_by_its_id(tmp_path: Path) -> None:
    one, two = signing.Signer(), signing.Signer()
    (tmp_path / "a.pem").write_bytes(one.public_key_pem)
    (tmp_path / "b.pem").write_bytes(two.public_key_pem)
    keys = verifying.load_keys([tmp_path / "a.pem", tmp_path / "b.pem"])
    assert sorted(keys) == sorted([one.key_id, two.key_id])
    assert signing.key_id(keys[one.key_id]) == one.key_id


def test_trail_files_sort_by_name() -> None:
    files = verifying.TrailFiles()
    files.add("x/01ABC.jsonl.gz", b"s")
    files.add("x/digest-000000000000.json", b"d")
    files.add("x/key-00.pem", b"k")
    files.add("x/other.json", b"o")
    assert files == verifying.TrailFiles(
        [("x/01ABC.jsonl.gz", b"s")],
        [("x/digest-000000000000.json", b"d")],
        [("x/key-00.pem", b"k")],
    )


def test_a_long_error_is_cut_short() -> None:
    assert verifying._short(ValueError("x" * 200)) == "x" * 120
