!> Kind parameters of colnn. The working precision `wp` is single by default; configure with
!> -DCOLNN_DOUBLE=ON (which defines COLNN_DOUBLE) for a double-precision library.
module colnn_kinds
  use, intrinsic :: iso_fortran_env, only: real32, real64, int32, int64
  implicit none
  private

  public :: sp, dp, wp, ik, i8, wp_name, ERRMSG_LEN

  integer, parameter :: sp = real32
  integer, parameter :: dp = real64
#ifdef COLNN_DOUBLE
  integer, parameter :: wp = real64
  character(len=*), parameter :: wp_name = 'float64'
#else
  integer, parameter :: wp = real32
  character(len=*), parameter :: wp_name = 'float32'
#endif
  integer, parameter :: ik = int32
  integer, parameter :: i8 = int64
  !> Recommended length of an `errmsg` buffer passed to colnn (longer messages are truncated).
  integer, parameter :: ERRMSG_LEN = 1024
end module colnn_kinds
