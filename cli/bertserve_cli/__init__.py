"""``bertserve``: the command line for users who would rather not read YAML.

Kept apart from the operator and the server so it can use either without tying them together.
"""
