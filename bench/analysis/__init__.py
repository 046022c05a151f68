"""Reading results: runs over seeds, paired statistics, Pareto fronts and the report."""
