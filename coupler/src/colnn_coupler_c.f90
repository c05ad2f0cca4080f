!> C binding of the coupler (include/colnn_coupler.h), so a C or C++ host model plugs in the
!> same way a Fortran one does. Status 0 = success; errmsg is NUL-terminated.
module colnn_coupler_c
  use, intrinsic :: iso_c_binding
  use colnn, only: wp
  use colnn_c_strings, only: to_f => c_to_f_string, to_c => f_to_c_buffer
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize, &
                           colnn_scheme_t, colnn_fallback_monitor_t
  implicit none
  private

  public :: c_coupler_init, c_coupler_run, c_coupler_finalize
  public :: c_scheme_init, c_scheme_run, c_scheme_finalize, c_coupler_timers, c_scheme_timers
  public :: c_scheme_init_closure, c_scheme_run_closure, c_scheme_fallback_update

  !> The schemes a C host created, by id (1, 2, ...). An id is never reused, so a host that
  !> calls a finalized scheme gets an error instead of another scheme's outputs.
  type :: scheme_box_t
    type(colnn_scheme_t), pointer :: p => null()
    !> the fallback verdict of the host's run (colnn_scheme_fallback_update)
    type(colnn_fallback_monitor_t) :: monitor
  end type scheme_box_t
  type(scheme_box_t), allocatable, save :: schemes(:)
  integer, save :: n_schemes = 0

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

  !> int colnn_scheme_init(const char *config, const char *name, int n_inputs, int n_outputs,
  !>                       const char *input_vars, const char *output_vars, int *scheme,
  !>                       char *errmsg, size_t errmsg_len)
  integer(c_int) function c_scheme_init(config, name, n_inputs, n_outputs, input_vars, &
                                        output_vars, scheme, errmsg, errmsg_len) &
      bind(C, name='colnn_scheme_init') result(errflg)
    character(kind=c_char), intent(in) :: config(*), name(*)
    integer(c_int), intent(in), value :: n_inputs, n_outputs
    type(c_ptr), intent(in), value :: input_vars, output_vars
    integer(c_int), intent(out) :: scheme
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    errflg = create_scheme(config, name, n_inputs, n_outputs, input_vars, output_vars, &
                           .false., scheme, errmsg, errmsg_len)
  end function c_scheme_init

  !> int colnn_scheme_init_closure(const char *config, const char *name, int n_inputs,
  !>                               int n_outputs, const char *input_vars,
  !>                               const char *output_vars, int host_closure, int *scheme,
  !>                               char *errmsg, size_t errmsg_len)
  !> As colnn_scheme_init, for a host that passes its own closure to colnn_scheme_run_closure
  !> (host_closure != 0), which fallback and ramp_steps need.
  integer(c_int) function c_scheme_init_closure(config, name, n_inputs, n_outputs, input_vars, &
                                                output_vars, host_closure, scheme, errmsg, &
                                                errmsg_len) &
      bind(C, name='colnn_scheme_init_closure') result(errflg)
    character(kind=c_char), intent(in) :: config(*), name(*)
    integer(c_int), intent(in), value :: n_inputs, n_outputs, host_closure
    type(c_ptr), intent(in), value :: input_vars, output_vars
    integer(c_int), intent(out) :: scheme
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    errflg = create_scheme(config, name, n_inputs, n_outputs, input_vars, output_vars, &
                           host_closure /= 0, scheme, errmsg, errmsg_len)
  end function c_scheme_init_closure

  integer(c_int) function create_scheme(config, name, n_inputs, n_outputs, input_vars, &
                                        output_vars, host_closure, scheme, errmsg, &
                                        errmsg_len) result(errflg)
    character(kind=c_char), intent(in) :: config(*), name(*)
    integer(c_int), intent(in), value :: n_inputs, n_outputs
    type(c_ptr), intent(in), value :: input_vars, output_vars
    logical, intent(in) :: host_closure
    integer(c_int), intent(out) :: scheme
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(colnn_scheme_t), pointer :: p
    type(scheme_box_t), allocatable :: grown(:)
    character(len=1024) :: msg
    integer :: flg
    scheme = 0
    allocate (p)
    if (c_associated(input_vars) .and. c_associated(output_vars)) then
      call p%init(to_f(config), int(n_inputs), int(n_outputs), msg, flg, name=to_f(name), &
                  input_vars=lines(input_vars), output_vars=lines(output_vars), &
                  host_closure=host_closure)
    else if (c_associated(input_vars)) then
      call p%init(to_f(config), int(n_inputs), int(n_outputs), msg, flg, name=to_f(name), &
                  input_vars=lines(input_vars), host_closure=host_closure)
    else if (c_associated(output_vars)) then
      call p%init(to_f(config), int(n_inputs), int(n_outputs), msg, flg, name=to_f(name), &
                  output_vars=lines(output_vars), host_closure=host_closure)
    else
      call p%init(to_f(config), int(n_inputs), int(n_outputs), msg, flg, name=to_f(name), &
                  host_closure=host_closure)
    end if
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
    if (flg /= 0) then
      deallocate (p)
      return
    end if
    if (.not. allocated(schemes)) allocate (schemes(8))
    if (n_schemes == size(schemes)) then
      allocate (grown(2 * size(schemes)))
      grown(1:n_schemes) = schemes
      call move_alloc(grown, schemes)
    end if
    n_schemes = n_schemes + 1
    schemes(n_schemes)%p => p
    schemes(n_schemes)%monitor = p%fallback_monitor()
    scheme = int(n_schemes, c_int)
  end function create_scheme

  !> int colnn_scheme_run(int scheme, const colnn_real *inputs, int n_columns,
  !>                      colnn_real *outputs, int64_t column_offset, int64_t step,
  !>                      const colnn_real *targets, char *errmsg, size_t errmsg_len)
  integer(c_int) function c_scheme_run(scheme, inputs, n_columns, outputs, column_offset, step, &
                                       targets, errmsg, errmsg_len) &
      bind(C, name='colnn_scheme_run') result(errflg)
    integer(c_int), intent(in), value :: scheme
    type(c_ptr), intent(in), value :: inputs, outputs, targets
    integer(c_int), intent(in), value :: n_columns
    integer(c_int64_t), intent(in), value :: column_offset, step
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(colnn_scheme_t), pointer :: p
    real(wp), pointer :: x(:, :), y(:, :), t(:, :)
    character(len=1024) :: msg
    integer :: flg, n_in, n_out
    errflg = 1
    if (.not. live(scheme, p, 'colnn_scheme_run', errmsg, errmsg_len)) return
    if (.not. c_associated(inputs) .or. .not. c_associated(outputs) .or. n_columns < 1) then
      call to_c('colnn_scheme_run: null array or n_columns < 1', errmsg, errmsg_len)
      return
    end if
    call p%sizes(n_in, n_out)
    call c_f_pointer(inputs, x, [n_in, int(n_columns)])
    call c_f_pointer(outputs, y, [n_out, int(n_columns)])
    if (c_associated(targets)) then
      call c_f_pointer(targets, t, [n_out, int(n_columns)])
      call p%run(x, y, msg, flg, column_offset=int(column_offset), targets=t, step=int(step))
    else
      call p%run(x, y, msg, flg, column_offset=int(column_offset), step=int(step))
    end if
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
  end function c_scheme_run

  !> int colnn_scheme_run_closure(int scheme, const colnn_real *inputs, int n_columns,
  !>                              colnn_real *outputs, const colnn_real *closure,
  !>                              int64_t column_offset, int64_t step, int *n_fallback,
  !>                              char *errmsg, size_t errmsg_len)
  !> colnn_scheme_run with the host's own closure of the columns, (n_outputs, n_columns):
  !> fallback columns take it, a ramp blends with it; n_fallback (or NULL): the chunk's
  !> columns that fell back.
  integer(c_int) function c_scheme_run_closure(scheme, inputs, n_columns, outputs, closure, &
                                               column_offset, step, n_fallback, errmsg, &
                                               errmsg_len) &
      bind(C, name='colnn_scheme_run_closure') result(errflg)
    integer(c_int), intent(in), value :: scheme
    type(c_ptr), intent(in), value :: inputs, outputs, closure, n_fallback
    integer(c_int), intent(in), value :: n_columns
    integer(c_int64_t), intent(in), value :: column_offset, step
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(colnn_scheme_t), pointer :: p
    real(wp), pointer :: x(:, :), y(:, :), c(:, :)
    integer(c_int), pointer :: nf
    character(len=1024) :: msg
    integer :: flg, n_in, n_out, count
    errflg = 1
    if (.not. live(scheme, p, 'colnn_scheme_run_closure', errmsg, errmsg_len)) return
    if (.not. c_associated(inputs) .or. .not. c_associated(outputs) .or. &
        .not. c_associated(closure) .or. n_columns < 1) then
      call to_c('colnn_scheme_run_closure: null array or n_columns < 1', errmsg, errmsg_len)
      return
    end if
    call p%sizes(n_in, n_out)
    call c_f_pointer(inputs, x, [n_in, int(n_columns)])
    call c_f_pointer(outputs, y, [n_out, int(n_columns)])
    call c_f_pointer(closure, c, [n_out, int(n_columns)])
    call p%run(x, y, msg, flg, column_offset=int(column_offset), step=int(step), closure=c, &
               n_fallback=count)
    if (c_associated(n_fallback)) then
      call c_f_pointer(n_fallback, nf)
      nf = int(count, c_int)
      if (flg /= 0) nf = 0
    end if
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
  end function c_scheme_run_closure

  !> int colnn_scheme_fallback_update(int scheme, int64_t n_fallback, int64_t n_columns,
  !>                                  int *failed, char *errmsg, size_t errmsg_len)
  !> The scheme's fallback verdict for the host's run, once a step: the step's fallback
  !> columns and columns (summed over chunks and ranks). *failed = 1, with the reason in
  !> errmsg, when more than fallback_max_share fell back at each of fallback_max_steps steps.
  integer(c_int) function c_scheme_fallback_update(scheme, n_fallback, n_columns, failed, &
                                                   errmsg, errmsg_len) &
      bind(C, name='colnn_scheme_fallback_update') result(errflg)
    integer(c_int), intent(in), value :: scheme
    integer(c_int64_t), intent(in), value :: n_fallback, n_columns
    integer(c_int), intent(out) :: failed
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(colnn_scheme_t), pointer :: p
    character(len=512) :: msg
    integer :: flg
    errflg = 1
    failed = 0
    if (.not. live(scheme, p, 'colnn_scheme_fallback_update', errmsg, errmsg_len)) return
    if (n_fallback < 0 .or. n_columns < 1 .or. n_fallback > n_columns) then
      call to_c('colnn_scheme_fallback_update: need 0 <= n_fallback <= n_columns and '// &
                'n_columns >= 1', errmsg, errmsg_len)
      return
    end if
    call schemes(scheme)%monitor%update(int(n_fallback, 8), int(n_columns, 8), msg, flg)
    failed = int(flg, c_int)
    errflg = 0
    call to_c(msg, errmsg, errmsg_len)
  end function c_scheme_fallback_update

  !> int colnn_scheme_finalize(int scheme, char *errmsg, size_t errmsg_len)
  integer(c_int) function c_scheme_finalize(scheme, errmsg, errmsg_len) &
      bind(C, name='colnn_scheme_finalize') result(errflg)
    integer(c_int), intent(in), value :: scheme
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(colnn_scheme_t), pointer :: p
    character(len=1024) :: msg
    integer :: flg
    errflg = 1
    if (.not. live(scheme, p, 'colnn_scheme_finalize', errmsg, errmsg_len)) return
    call p%finalize(msg, flg)
    deallocate (schemes(scheme)%p)
    errflg = int(flg, c_int)
    call to_c(msg, errmsg, errmsg_len)
  end function c_scheme_finalize

  !> void colnn_coupler_timers(int64_t *calls, int64_t *columns, double *seconds)
  subroutine c_coupler_timers(calls, columns, seconds) bind(C, name='colnn_coupler_timers')
    use colnn_coupler, only: colnn_coupler_timers
    integer(c_int64_t), intent(out) :: calls, columns
    real(c_double), intent(out) :: seconds
    integer(8) :: a, b
    real(8) :: t
    call colnn_coupler_timers(a, b, t)
    calls = a
    columns = b
    seconds = t
  end subroutine c_coupler_timers

  !> int colnn_scheme_timers(int scheme, int64_t *calls, int64_t *columns, double *seconds,
  !>                         char *errmsg, size_t errmsg_len)
  integer(c_int) function c_scheme_timers(scheme, calls, columns, seconds, errmsg, errmsg_len) &
      bind(C, name='colnn_scheme_timers') result(errflg)
    integer(c_int), intent(in), value :: scheme
    integer(c_int64_t), intent(out) :: calls, columns
    real(c_double), intent(out) :: seconds
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(colnn_scheme_t), pointer :: p
    integer(8) :: a, b
    real(8) :: t
    errflg = 1
    calls = 0
    columns = 0
    seconds = 0
    if (.not. live(scheme, p, 'colnn_scheme_timers', errmsg, errmsg_len)) return
    call p%timers(a, b, t)
    calls = a
    columns = b
    seconds = t
    errflg = 0
    call to_c('', errmsg, errmsg_len)
  end function c_scheme_timers

  !> The lines of a NUL-terminated C string (one declared variable a line).
  function lines(text) result(out)
    type(c_ptr), intent(in) :: text
    character(len=256), allocatable :: out(:)
    character(kind=c_char), pointer :: c(:)
    integer :: n, k, start, count
    character(len=:), allocatable :: f
    call c_f_pointer(text, c, [huge(1) / 2])
    n = 0
    do while (c(n + 1) /= c_null_char)
      n = n + 1
    end do
    allocate (character(len=n) :: f)
    do k = 1, n
      f(k:k) = c(k)
    end do
    count = 0
    do k = 1, n
      if (f(k:k) == new_line('a')) count = count + 1
    end do
    if (n > 0) then
      if (f(n:n) /= new_line('a')) count = count + 1
    end if
    allocate (out(count))
    start = 1
    count = 0
    do k = 1, n + 1
      if (k > n) then
        if (start <= n) then
          count = count + 1
          out(count) = f(start:n)
        end if
      else if (f(k:k) == new_line('a')) then
        count = count + 1
        out(count) = f(start:k - 1)
        start = k + 1
      end if
    end do
  end function lines

  logical function live(scheme, p, caller, errmsg, errmsg_len)
    integer(c_int), intent(in) :: scheme
    type(colnn_scheme_t), pointer, intent(out) :: p
    character(len=*), intent(in) :: caller
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in) :: errmsg_len
    character(len=16) :: id
    live = .false.
    p => null()
    if (scheme >= 1 .and. scheme <= n_schemes) p => schemes(scheme)%p
    if (associated(p)) then
      live = .true.
      return
    end if
    write (id, '(i0)') scheme
    call to_c(caller//': scheme '//trim(id)//' does not exist (never created, or finalized)', &
              errmsg, errmsg_len)
  end function live

  subroutine sizes(n_in, n_out)
    use colnn_coupler, only: colnn_coupler_sizes
    integer(c_int), intent(out) :: n_in, n_out
    integer :: a, b
    call colnn_coupler_sizes(a, b)
    n_in = int(a, c_int)
    n_out = int(b, c_int)
  end subroutine sizes
end module colnn_coupler_c
