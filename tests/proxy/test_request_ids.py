"""Request ids: a caller's is kept only as a UUID (lowercased) or a W3C trace-id; generated ones are 128
random bits in hex, cut from a pooled os.urandom buffer, never repeated across the pool's refills nor
between a forked child and its parent."""

from __future__ import annotations

import os
import re

from gateway.proxy.context import new_request_id, request_id_from

_HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_hex_and_distinct_across_refills() -> None:
    ids = [new_request_id() for _ in range(2000)]  # several pools of 256
    assert all(_HEX_ID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_uuid_or_trace_id_is_kept_and_any_other_shape_replaced() -> None:
    uuid = "123e4567-e89b-12d3-a456-426614174000"
    assert request_id_from(uuid) == uuid
    assert request_id_from(uuid.upper()) == uuid  # normalised to lowercase
    assert request_id_from("4bf92f3577b34da6a3ce929d0e0e4736") == "4bf92f3577b34da6a3ce929d0e0e4736"
    for other in (
        "req-abc.1", "886912345678", "ORDER-2026-000123", "kim.lee.example.com", "bad id", "0" * 32,
        "4BF92F3577B34DA6A3CE929D0E0E4736", "4bf92f3577b34da6a3ce929d0e0e473", uuid + "\n", "{" + uuid + "}",
        "123e4567e89b-12d3-a456-426614174000-", uuid.replace("-", ":"), "g" * 32, "",
    ):
        replaced = request_id_from(other)
        assert _HEX_ID.match(replaced), other
        assert replaced != other
    assert _HEX_ID.match(request_id_from(None))


def test_a_forked_child_starts_with_a_fresh_pool() -> None:
    new_request_id()  # the parent's pool holds ids not yet handed out
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids to the parent, then leave without running pytest's clean-up
        try:
            os.write(write_end, " ".join(new_request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent_ids = [new_request_id() for _ in range(300)]  # the rest of the parent's pool and beyond
    assert len(child_ids) == 3
    assert all(_HEX_ID.match(i) for i in child_ids)
    assert not set(child_ids) & set(parent_ids)
