"""The benchmark suite: this method against its ablations and references, and its reports.

Learning curves, budgets, the merge and trimming reports and the network profile live
here too. It builds on the simulation runner (:mod:`simulations.run`,
:mod:`simulations.scenario`, :mod:`simulations.evaluate`), which imports nothing from here.
"""
