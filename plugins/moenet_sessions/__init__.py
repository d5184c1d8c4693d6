"""eBGP sessions from the control plane: the pure half of the ``sessionSync`` reconciler.

What exists (no hookimpls yet; the task, the apply phases and the CLI ``plan``
command come later and call these modules):

- :mod:`.model`: ``parse_sessions`` validates the CP answer into ``Session`` or
  ``Invalid`` per element, never letting one bad session break the others.
- :mod:`.desired`: ``NodeSettings`` and ``build_desired``: the tunnel spec, the
  routing fragment and the firewall port one valid session needs, deterministically.
- :mod:`.records`: the persisted per-session records (``ConfiguredSession``,
  ``Report``, ``Previous``) and their JSON forms.
- :mod:`.planner`: ``plan`` diffs desired against observed and previous state and
  says what to create, repair, remove and report (pure, no I/O).
- :mod:`.guard`: the mass-removal guard the planner consults.
- :mod:`.store`: the last valid CP answer, ``Previous`` and the status outbox in a
  ``StateStore``.
"""

from __future__ import annotations
