"""Deterministic discrete-event simulation of staging -> master gating (issue #8).

The simulator (:mod:`bench.gate_sim.sim`) plays git, k pools and BVT outcomes on a virtual
clock and drives any policy that speaks the gate's event/action vocabulary
(``schedulers/events.py``): the project's own ``schedulers.policy.GatePolicy`` and the
reference policies of :mod:`bench.gate_sim.policies`.
"""
