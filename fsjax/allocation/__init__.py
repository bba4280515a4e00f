"""FairSynergy: alpha-fair allocation of a shared budget (network utility maximisation).

Agents ``i = 1..n`` share a budget ``B``. Agent ``i`` turns ``x_i`` units of
resource into accuracy ``u_i(x_i)`` (concave, increasing). :func:`solve` returns

    maximise   sum_i w_i * U_alpha(u_i(x_i))
    subject to sum_i x_i <= B,  lower_i <= x_i <= upper_i

with the alpha-fair utility ``U_0(u) = u`` (utilitarian, the study's choice),
``U_1(u) = log u`` (proportional fairness), ``U_a(u) = u**(1-a) / (1-a)``
otherwise (large ``a`` approaches max-min fairness).

Solvers (all differentiable by implicit differentiation):

* ``"dual"`` -- power-law utilities: one budget multiplier decouples the
  agents, each best response is closed-form, a bisection finds the multiplier.
* ``"projected"`` -- any concave differentiable utility (:class:`Concave`):
  projected gradient with the exact box-and-budget projection.
* ``"joint"`` / ``"study"`` / ``"study_even"`` -- two resources
  (:class:`CobbDouglas`): block coordinate ascent, each block an exact
  ``"dual"`` solve, iterated to a KKT point (``"joint"``), or the study's single
  pass (``"study"``: data with compute held at zero extra, then compute;
  ``"study_even"``: the same pass from an even split of compute).

Every solve reports a relative KKT residual and an honest ``converged`` flag.
Batches of instances with different agent counts share one compiled solve
through a validity ``mask`` (:func:`pad_stack`, :func:`solve_batch`).

Modules, one idea each: ``utilities`` (curves, result type, welfare),
``validation`` (argument checks and canonical form), ``jaxopt_solvers`` (the
only module importing jaxopt), ``waterfill`` (water filling, projection),
``kkt`` (diagnostics), ``dual``, ``projected``, ``cobb_douglas`` (the solver
paths), ``api`` (solve, solve_batch, pad_stack), ``baselines`` (uniform,
random, equalizing, REGISTRY), ``fitting`` (learning curves), ``instances``
(the study's random systems and table scenarios), ``report`` (``fsjax allocate``).
"""

from fsjax.allocation.api import pad_stack, solve, solve_batch
from fsjax.allocation.baselines import REGISTRY, equalizing, fairsynergy, random, uniform
from fsjax.allocation.fitting import PowerLawFit, fit_power_law
from fsjax.allocation.utilities import Allocation, Array, CobbDouglas, Concave, PowerLaw, alpha_fair
from fsjax.allocation.waterfill import project_box_budget, waterfill

__all__ = [
    "Allocation", "Array", "CobbDouglas", "Concave", "PowerLaw", "PowerLawFit", "REGISTRY", "alpha_fair",
    "equalizing", "fairsynergy", "fit_power_law", "pad_stack", "project_box_budget", "random", "solve",
    "solve_batch", "uniform", "waterfill",
]
