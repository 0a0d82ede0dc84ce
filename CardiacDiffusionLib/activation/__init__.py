"""Late mechanical activation (LMA): TOS per sector, sectors from the RV insertion, TOS painted on the myocardium.

Modules: ``tos`` (strain checks, onset detector, CSV tables), ``regressor`` / ``train_tos`` (learned TOS),
``sectors`` (LV frame and RV insertion from labels), ``mapping`` (3D placement, mesh, VTP/STL),
``bullseye`` (AHA 17 segments, lead suggestion), ``qa`` (flags), ``pipeline`` (``run_lma``),
``phantom_case`` (test cases with known answers). Nothing heavy is imported here: the activation
phantom imports ``tos``.
"""
