library(testthat)
library(sccbgm)

test_check("sccbgm")
