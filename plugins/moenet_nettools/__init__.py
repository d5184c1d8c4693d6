"""Network tools for operators and looking glasses: two plugins, one package.

- ``nettools`` (:mod:`.tools`): the Go agent's ``/ping``, ``/tcping``,
  ``/trace``, ``/route`` and ``/path`` on the local API (POST ``{"target"}`` ->
  ``{"result"}``), behind the API's token.
- ``lg`` (:mod:`.lg`): a bird-lg-go compatible proxy (``GET /bird?q=``,
  ``/bird6``, ``/traceroute``, ``/traceroute6``) on a listen address of its own,
  off by default.

They share the careful parts, which is why they live in one package (plugins
never import each other): :mod:`.targets` (what may be probed),
:mod:`.run` (bounded subprocesses), :mod:`.birdsock` (read-only queries on
BIRD's control socket in restricted mode) and :mod:`.grammar` (the ``show``
commands a looking glass may send). This module itself implements no hook:
each entry point names its own module, so enabling one does not enable the
other.
"""
