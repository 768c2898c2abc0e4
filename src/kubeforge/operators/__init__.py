"""kopf operators, one subpackage per kind. Importing a handlers module registers its handlers."""
