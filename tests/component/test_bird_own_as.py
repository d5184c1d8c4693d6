"""A peer with the node's own AS never takes the BIRD tree down (issue 12 item 5),
against real BIRD 3: whoever declares it (the sessions plugin before the node's
AS is known, a third-party plugin), that one fragment is rejected with the
reason and every other peer is applied. The sessions plugin's own check then
reports it ERROR "that is iBGP" (``tests/unit/test_node_identity.py``)."""

from __future__ import annotations

import pytest
from helpers.bird import U1, U2, cp_data, env, policy, protocol_names, session, symbol  # noqa: F401

pytestmark = pytest.mark.netns

OWN_AS = 4242421234  # cp_data()'s policy.dn42As


async def test_own_as_peer_is_rejected_alone(env) -> None:  # noqa: F811
    b = await env.backend()
    data = cp_data("h1")
    assert (await b.set_policy(policy(data), "h1", raw=data)).ok
    result = await b.declare("sessions", {U1: session(OWN_AS, 1), U2: session(4242420002, 2)})
    assert result.ok, result.error
    assert set(result.rejected) == {U1}
    assert "this node's own AS" in result.rejected[U1] and "iBGP" in result.rejected[U1]
    names = await protocol_names(b)
    assert symbol(U2, 4242420002) in names
    assert symbol(U1, OWN_AS) not in names
    # Without it, the same set applies with nothing rejected.
    again = await b.declare("sessions", {U2: session(4242420002, 2)})
    assert again.ok and again.rejected == {}
