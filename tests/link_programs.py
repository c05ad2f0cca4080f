"""Small programs that link against an installed libcolnn (the CMake install tree, the wheel):
what a GCM build compiles first to see that the library, its modules and flags are usable."""

#: a Fortran host of the coupler: init from colnn.nml (4 inputs, 3 outputs), one run on two
#: columns, finalize; prints the outputs (3es16.8 a column)
COUPLER_HOST_F90 = (
    "program toy_host\n  use colnn_kinds, only: wp\n"
    "  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize\n"
    "  implicit none\n  character(len=512) :: errmsg\n  integer :: errflg\n"
    "  real(wp) :: x(4, 2), y(3, 2)\n"
    "  call colnn_coupler_init('colnn.nml', 4, 3, errmsg, errflg)\n"
    "  if (errflg /= 0) then\n    print '(a)', trim(errmsg)\n    error stop 1\n  end if\n"
    "  x(:, 1) = [1.0, 2.0, 3.0, 4.0]\n  x(:, 2) = -x(:, 1)\n"
    "  call colnn_coupler_run(x, y, errmsg, errflg)\n  if (errflg /= 0) error stop 2\n"
    "  call colnn_coupler_finalize(errmsg, errflg)\n  print '(3es16.8)', y\n"
    "end program toy_host\n")
