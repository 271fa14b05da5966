"""Every method, registered in this order (also the order of their own results.csv columns: receiver, scale,
in_circuit). Adding a method: a folder here, a YAML in configs/method/, one import line below, its tests."""

from circuitlab.methods import activation_patching  # noqa: F401
from circuitlab.methods import attribution_patching  # noqa: F401
from circuitlab.methods import path_patching  # noqa: F401
from circuitlab.methods import das  # noqa: F401
from circuitlab.methods import direct_attribution  # noqa: F401
from circuitlab.methods import ablation  # noqa: F401
from circuitlab.methods import eap  # noqa: F401
from circuitlab.methods import eap_ig  # noqa: F401
from circuitlab.methods import edge_patching  # noqa: F401
from circuitlab.methods import ensemble  # noqa: F401
from circuitlab.methods import edge_pruning  # noqa: F401
