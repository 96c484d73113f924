# The README's configuration reference matches the option table.
sluice_py_test(NAME unit.readme_config SCRIPT docs/check_readme_config.py LABEL unit TIMEOUT 30)
# The docker-compose files pass `docker-compose config`; the Dockerfile builds as scripts/test.
sluice_py_test(NAME compose.config SCRIPT docs/check_compose.py LABEL unit TIMEOUT 60)
