"""Reports from the MLflow store: the study's tables beside the paper's, the settings tables, arm comparisons
over seeds, Pareto plots, and the report text.

Layers, each importing only those above it: ``metrics`` (the metric catalogue) and ``recipe_report`` (the report
hook a recipe's registration supplies) import nothing from the harness; ``sources`` reads the store and the papers'
tables; ``compare``, ``pareto``, ``report`` and ``settings`` build on those; ``tables`` writes a study's folder.
"""
