"""BIRD 3: the only writer of BIRD configuration and the only user of its control socket.

So far this package holds the control-socket client (:mod:`.client`) and the pure
protocol layer it is built on (:mod:`.protocol`: framing, errors, read-out
parsers). Templates, apply-with-rollback and the ``routing`` backend come next and
sit on :class:`~moenet_bird.client.BirdClient`; no hooks are registered yet.

BIRD 3 itself is installed by ``scripts/install-bird`` (wrappers in
``/opt/moenet-bird3/bin``).
"""

from __future__ import annotations
