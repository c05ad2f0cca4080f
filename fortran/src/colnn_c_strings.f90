!> Conversions between C strings and Fortran strings for the C bindings (libcolnn's and the
!> coupler's).
module colnn_c_strings
  use, intrinsic :: iso_c_binding, only: c_char, c_null_char, c_size_t
  implicit none
  private

  public :: c_to_f_string, f_to_c_buffer

contains

  function c_to_f_string(s) result(f)
    character(kind=c_char), intent(in) :: s(*)
    character(len=:), allocatable :: f
    integer :: n
    n = 0
    do while (s(n + 1) /= c_null_char)
      n = n + 1
    end do
    allocate (character(len=n) :: f)
    f = transfer(s(1:n), f)
  end function c_to_f_string

  !> Copies f (trailing blanks dropped) into a NUL-terminated buffer of buflen bytes.
  subroutine f_to_c_buffer(f, buf, buflen)
    character(len=*), intent(in) :: f
    integer(c_size_t), intent(in) :: buflen
    character(kind=c_char), intent(out) :: buf(*)
    integer :: n, i
    if (buflen < 1) return
    n = int(min(int(len_trim(f), c_size_t), buflen - 1))
    do i = 1, n
      buf(i) = f(i:i)
    end do
    buf(n + 1) = c_null_char
  end subroutine f_to_c_buffer
end module colnn_c_strings
