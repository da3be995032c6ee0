"""Which described topics are not ready to be written to yet (stream.kafka.topics.leaderless)."""

from __future__ import annotations

import pytest

from stream.kafka.topics import leaderless


def described(topic: str, error_code: int = 0, leaders: tuple[int, ...] = (1, 1)) -> dict:
    return {
        "topic": topic,
        "error_code": error_code,
        "partitions": [{"partition": index, "leader": leader, "error_code": 0} for index, leader in enumerate(leaders)],
    }


@pytest.mark.parametrize(
    ("answer", "waiting"),
    [
        ([described("a"), described("b")], []),
        ([described("a"), described("b", error_code=3, leaders=())], ["b"]),  # unknown topic
        ([described("a", leaders=())], ["a"]),  # known, partitions not assigned yet
        ([described("a", leaders=(1, -1)), described("b")], ["a"]),  # one partition without a leader
        ([described("a", leaders=(-1, -1)), described("b", leaders=(-1,))], ["a", "b"]),
        ([], []),
    ],
)
def test_a_topic_is_ready_once_every_partition_has_a_leader(answer: list[dict], waiting: list[str]) -> None:
    assert leaderless(answer) == waiting
