"""Edge-level circuit discovery, shared by the `eap`, `eap_ig` and `edge_patching` methods.

- `graph`: the computational graph (senders, receivers, edges; the EAP-IG / MIB naming and counts);
- `hooks`: the model settings and hook names that expose every sender's output and receiver's input;
- `attribution`: EAP and EAP-IG scores of every edge (gradient x activation difference);
- `patching`: exact edge patching, many edges per forward, started at the receiver's block;
- `masked`: a forward in which every edge outside a circuit carries its counterfactual value;
- `circuits`: circuits cut from scores (top-n, threshold, greedy), pruning, faithfulness curves, CPR / CMD,
  the EAP-IG Graph JSON.
"""
