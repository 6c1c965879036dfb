# Choosing and checking the Python side.

test_that("use_sccbgm_python validates its argument", {
  expect_error(use_sccbgm_python(c("a", "b")), "single path")
  expect_error(use_sccbgm_python("/no/such/python"), "does not exist")
  expect_null(use_sccbgm_python("/no/such/python", required = FALSE))
})

test_that("sccbgm_available reports TRUE when Python sccbgm is usable", {
  skip_if_no_sccbgm()
  expect_true(sccbgm_available())
  expect_true(reticulate::py_module_available("sccbgm.bridge"))
  # the interpreter is the one the environment names
  py <- Sys.getenv("SCCBGM_PYTHON", Sys.getenv("RETICULATE_PYTHON"))
  if (nzchar(py)) {
    expect_identical(normalizePath(dirname(reticulate::py_config()$python)),
                     normalizePath(dirname(py)))
  }
})

test_that("Python exceptions other than SCCBGMError are reported with their type", {
  skip_if_no_sccbgm()
  err <- expect_error(.py_call(bridge()$matrix_from_spec(list(kind = "dense", shape = list(2L, 2L),
                                                              values = .np1(1:3)))),
                      class = "sccbgm_error")
  expect_match(conditionMessage(err), "dense matrix spec has 3 values")
  builtins <- reticulate::import_builtins(convert = FALSE)
  err <- expect_error(.py_call(builtins$int("x")), class = "sccbgm_python_error")
  expect_match(conditionMessage(err), "Python error in sccbgm \\(ValueError\\)")
})
