"""The report: load ``results/``, summarise, render tables, draw plots, write README.md.
Entry point: :func:`bench.analysis.report.write.write_report`.
"""
