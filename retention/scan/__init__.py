"""Collecting what the planner needs (reads only): the inventory, push times, subjects."""
