"""Carrying out a plan: deletion, the trash it writes first, restore, verification after."""
