"""The composition roots: what wires a whole run from the layers below (data, models, training,
evaluation, fusion, inference). A training run (:mod:`.train`), the steps of one trained system as the
demo and every sweep point run them (:mod:`.workflow`), the scoring of trained runs (:mod:`.evaluate`),
the jobs a cluster runs (:mod:`.jobs`) and the demo's settings (:mod:`.demo`). Nothing below imports this
package; the sweep and the commands sit above it.
"""
