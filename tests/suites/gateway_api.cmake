# The gateway's HTTP API on the dev broker: endpoints, bad inputs, enrichment, CORS, limits.
foreach(case api limits capacity)
  sluice_py_test(NAME e2e.gateway_api.${case} SCRIPT e2e/test_gateway_api.py
                 ARGS --case ${case} FIXTURES postgres TIMEOUT 120)
endforeach()
