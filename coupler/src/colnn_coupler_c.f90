!> C binding of the coupler (include/colnn_coupler.h), so a C or C++ host model plugs in the
!> same way a Fortran one does. Status 0 = success; errmsg is NUL-terminated.
module colnn_coupler_c
  use, intrinsic :: iso_c_binding
  use colnn, only: wp
  use colnn_c_strings, only: to_f => c_to_f_string, to_c => f_to_c_buffer
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize
  implicit none
  private

  public :: c_coupler_init, c_coupler_run, c_coupler_finalize

contains

  integer(c_int) function c_coupler_init(config, n_inputs, n_outputs, errmsg, errmsg_len) &
      bind(C, name='colnn_coupler_init') result(errflg)
    character(kind=c_char), intent(in) :: config(*)
    integer(c_int), intent(in), value :: n_inputs, n_outputs
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    character(len=1024) :: msg
    integer :: flg
    call colnn_coupler_init(to_f(config), int(n_inputs), int(n_outputs), msg, flg)
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
  end function c_coupler_init

  integer(c_int) function c_coupler_run(inputs, n_columns, outputs, column_offset, step, &
                                        targets, errmsg, errmsg_len) &
      bind(C, name='colnn_coupler_run') result(errflg)
    type(c_ptr), intent(in), value :: inputs, outputs, targets
    integer(c_int), intent(in), value :: n_columns
    integer(c_int64_t), intent(in), value :: column_offset, step
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    integer(c_int) :: n_in, n_out
    real(wp), pointer :: x(:, :), y(:, :), t(:, :)
    character(len=1024) :: msg
    integer :: flg
    errflg = 1
    if (.not. c_associated(inputs) .or. .not. c_associated(outputs) .or. n_columns < 1) then
      call to_c('colnn_coupler_run: null array or n_columns < 1', errmsg, errmsg_len)
      return
    end if
    call sizes(n_in, n_out)
    if (n_in < 1) then
      call to_c('colnn_coupler_run: colnn_coupler_init has not succeeded', errmsg, errmsg_len)
      return
    end if
    call c_f_pointer(inputs, x, [int(n_in), int(n_columns)])
    call c_f_pointer(outputs, y, [int(n_out), int(n_columns)])
    if (c_associated(targets)) then
      call c_f_pointer(targets, t, [int(n_out), int(n_columns)])
      call colnn_coupler_run(x, y, msg, flg, column_offset=int(column_offset), targets=t, &
                             step=int(step))
    else
      call colnn_coupler_run(x, y, msg, flg, column_offset=int(column_offset), step=int(step))
    end if
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
  end function c_coupler_run

  integer(c_int) function c_coupler_finalize(errmsg, errmsg_len) &
      bind(C, name='colnn_coupler_finalize') result(errflg)
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    character(len=1024) :: msg
    integer :: flg
    call colnn_coupler_finalize(msg, flg)
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
  end function c_coupler_finalize

  subroutine sizes(n_in, n_out)
    use colnn_coupler, only: colnn_coupler_sizes
    integer(c_int), intent(out) :: n_in, n_out
    integer :: a, b
    call colnn_coupler_sizes(a, b)
    n_in = int(a, c_int)
    n_out = int(b, c_int)
  end subroutine sizes
end module colnn_coupler_c
