"""Closed-loop control on MetaSym rollouts: a sampling MPC (MPPI), its tracking cost, references, and a
lock-stepped closed loop that flies a plant under any controller (`metasym bench control`)."""
