"""Reading a peer's replies into the types a :class:`~gossipkv.Node` returns: each reply is
checked for its shape here, and anything else is a :exc:`DecodeError`. Pure functions."""

from __future__ import annotations

from .._errors import DecodeError
from .._messages import KvResult, Message, Reply
from ..membership._gossiper import MemberView


def reply_body(reply: Message) -> dict[str, object]:
    """The body of a :class:`Reply`.

    Raises:
      DecodeError: ``bad_shape``: another message.
    """
    if not isinstance(reply, Reply):
        raise DecodeError("bad_shape", f"unexpected reply {reply.TAG}")
    return reply.body


def kv_result(reply: Message) -> KvResult:
    """The answer to a read or a write.

    Raises:
      DecodeError: ``bad_shape``: another message.
    """
    if not isinstance(reply, KvResult):
        raise DecodeError("bad_shape", f"unexpected reply {reply.TAG}")
    return reply


def member_views(body: dict[str, object]) -> list[MemberView]:
    """The rows of a ``members`` reply (``{"self", "leader", "members": [...]}``), checked.

    Raises:
      DecodeError: ``bad_field``: not that shape, or a row with a field of the wrong type.
    """
    me, leader, rows = body.get("self"), body.get("leader"), body.get("members")
    if not isinstance(me, str) or not (leader is None or isinstance(leader, str)):
        raise DecodeError("bad_field", "members: self or leader is not a name")
    if not isinstance(rows, list):
        raise DecodeError("bad_field", "members: no list of members")
    out: list[MemberView] = []
    for row in rows:
        match row:
            case {
                "name": str(name),
                "address": str() | None as address,
                "status": str(status),
                "reachable": bool(reachable),
                "up_number": int() | None as up_number,
                "age_rank": int() | None as age_rank,
                "generation": int(generation),
                "heartbeat": int(heartbeat),
                "phi": float() | int() | None as phi,
                "metadata": dict(metadata),
            } if all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                pass
            case _:
                raise DecodeError("bad_field", f"members: malformed row {row!r:.120}")
        if any(isinstance(v, bool) for v in (up_number, age_rank, generation, heartbeat, phi)):
            raise DecodeError("bad_field", f"members: malformed row {row!r:.120}")
        out.append(
            MemberView(
                name=name,
                address=address,
                status=status,
                reachable=reachable,
                up_number=up_number,
                age_rank=age_rank,
                generation=generation,
                heartbeat=heartbeat,
                phi=None if phi is None else float(phi),
                metadata=dict(metadata),
                is_leader=name == leader,
                is_self=name == me,
            )
        )
    return out
