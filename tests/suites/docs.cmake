# The README's configuration reference matches the option table.
sluice_py_test(NAME unit.readme_config SCRIPT docs/check_readme_config.py LABEL unit TIMEOUT 30)
