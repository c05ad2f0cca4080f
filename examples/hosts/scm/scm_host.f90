!> colnn_scm: a single-column toy model, a host of its own built against the installed colnn
!> with pkg-config only (see README.md); it follows the host protocol (docs/host-protocol.md).
!>
!> n_columns independent columns of n_levels temperature anomalies T. Truth:
!>   dT/dt = (T_eq - T) / tau_rad + D lap(T) + heating + Q(T)
!> with T_eq a linear profile, vertical diffusion D, an Ornstein-Uhlenbeck heating of the lowest
!> level (per column, from the seed) and Q, a convective adjustment: where a layer is more
!> unstable than gamma (T_l - T_{l+1} > gamma), it is relaxed with time scale tau_conv, moving
!> heat upward (Q sums to zero over a column). Coarse mode replaces Q by a closure: 'nn' (the
!> coupler, inputs T, outputs Q, real64 arrays as the host holds them) or 'none'. Heun's method;
!> the closure is evaluated at both stages for all columns in one call.
!>
!> Usage: colnn_scm CONFIG.nml | --defaults
program colnn_scm
  use, intrinsic :: iso_fortran_env, only: dp => real64, i8 => int64, error_unit, output_unit
  use, intrinsic :: iso_c_binding, only: c_int, c_char, c_null_char
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize
  implicit none

  interface
    integer(c_int) function c_rename(from, to) bind(C, name='rename')
      import :: c_int, c_char
      character(kind=c_char), intent(in) :: from(*), to(*)
    end function c_rename
  end interface

  integer, parameter :: MAGIC = 1396919601   ! 'SCM1' as the first int64 of truth.bin

  ! &scm_model
  integer :: n_columns = 16, n_levels = 8
  real(dp) :: tau_rad = 40, diffusion = 0.05_dp, gamma = 1.0_dp, tau_conv = 2, &
              t_surface = 6, heating_mean = 0.6_dp, heating_sd = 0.8_dp, heating_tau = 5
  ! &scm_run
  character(len=16) :: mode = 'coarse', closure = 'nn'
  real(dp) :: dt = 0.05_dp
  integer :: n_steps = 1000, spinup_steps = 0, sample_interval = 10, output_interval = 10
  integer(i8) :: seed = 1
  character(len=1024) :: init_file = '', output_dir = '.'
  integer :: init_index = 1, inject_nan_step = -1, inject_nan_column = 1
  character(len=8) :: inject_value = 'nan'
  ! &scm_failure
  real(dp) :: max_abs = 100

  namelist /scm_model/ n_columns, n_levels, tau_rad, diffusion, gamma, tau_conv, t_surface, &
    heating_mean, heating_sd, heating_tau
  namelist /scm_run/ mode, closure, dt, n_steps, spinup_steps, sample_interval, output_interval, &
    seed, init_file, output_dir, init_index, inject_nan_step, inject_nan_column, inject_value
  namelist /scm_failure/ max_abs

  character(len=4096) :: path
  character(len=1024) :: errmsg, final_msg
  character(len=32) :: status, reason, variable
  real(dp), allocatable :: t(:, :), ts(:, :), k1(:, :), k2(:, :), q(:, :), teq(:), heat(:)
  real(dp), allocatable :: tsnap(:, :, :), qsnap(:, :, :), mean_t(:)
  integer :: stat, step, n_total, n_samp, i_samp, failure_step, errflg, n_rec
  integer(i8) :: clock0, clock1, rate
  real(dp) :: wall, nn_s
  logical :: coupled

  call system_clock(clock0, rate)
  nn_s = 0
  if (command_argument_count() /= 1) then
    write (error_unit, '(a)') 'usage: colnn_scm CONFIG.nml | --defaults'
    stop 2
  end if
  call get_command_argument(1, path)
  if (path == '--defaults') then
    write (output_unit, nml=scm_model)
    write (output_unit, nml=scm_run)
    write (output_unit, nml=scm_failure)
    stop
  end if

  call read_config(trim(path), stat, errmsg)
  if (stat == 0) call validate(stat, errmsg)
  coupled = mode == 'coarse' .and. closure == 'nn'
  if (stat == 0 .and. coupled) then
    call colnn_coupler_init(trim(path), n_levels, n_levels, errmsg, errflg)
    stat = errflg
  end if
  if (stat /= 0) then
    call finish('error', 0, -1, 'config', '', trim(errmsg))
    write (error_unit, '(a)') 'colnn_scm: '//trim(errmsg)
    stop 1
  end if

  allocate (t(n_levels, n_columns), ts(n_levels, n_columns), k1(n_levels, n_columns), &
            k2(n_levels, n_columns), q(n_levels, n_columns), teq(n_levels), heat(n_columns))
  do i_samp = 1, n_levels
    teq(i_samp) = t_surface * (1 - real(i_samp - 1, dp) / n_levels)
  end do
  heat = heating_mean
  call initial_state(stat, errmsg)
  if (stat /= 0) then
    call finish('error', 0, -1, 'init_file', '', trim(errmsg))
    write (error_unit, '(a)') 'colnn_scm: '//trim(errmsg)
    stop 1
  end if

  n_total = n_steps
  if (mode == 'truth') n_total = spinup_steps + n_steps
  n_samp = 0
  if (mode == 'truth') n_samp = n_steps / sample_interval
  allocate (tsnap(n_levels, n_columns, max(n_samp, 1)), qsnap(n_levels, n_columns, max(n_samp, 1)))
  allocate (mean_t(n_total / output_interval + 1))
  i_samp = 0
  n_rec = 0
  status = 'completed'
  reason = ''
  variable = ''
  failure_step = -1
  errmsg = ''
  do step = 1, n_total
    call advance_heating(step)
    call tendency(t, k1, stat)
    if (stat == 0) then
      ts = t + dt * k1
      call tendency(ts, k2, stat)
    end if
    if (stat /= 0) then
      call fail(step, 'nn_error', 'q')
      exit
    end if
    t = t + 0.5_dp * dt * (k1 + k2)
    if (step == inject_nan_step) t(:, inject_nan_column) = injected()
    if (.not. all(ieee_is_finite(t))) then
      errmsg = 'T is not finite'
      call fail(step, 'nonfinite', 't')
      exit
    else if (maxval(abs(t)) > max_abs) then
      write (errmsg, '(a,es12.5,a,es12.5)') '|T| = ', maxval(abs(t)), ' > max_abs = ', max_abs
      call fail(step, 'bounds', 't')
      exit
    end if
    if (mod(step, output_interval) == 0) then
      n_rec = n_rec + 1
      mean_t(n_rec) = sum(t) / size(t)
    end if
    if (mode == 'truth' .and. step > spinup_steps) then
      if (mod(step - spinup_steps, sample_interval) == 0) then
        i_samp = i_samp + 1
        call adjustment(t, q)
        tsnap(:, :, i_samp) = t
        qsnap(:, :, i_samp) = q
      end if
    end if
  end do
  if (coupled) call colnn_coupler_finalize(final_msg, errflg)
  if (mode == 'truth' .and. status == 'completed') then
    call write_truth(stat, errmsg)
    if (stat /= 0) then
      call finish('error', n_total, -1, 'io', '', trim(errmsg))
      stop 1
    end if
  end if
  if (status == 'completed') then
    errmsg = ''
    call finish(trim(status), n_total, -1, '', '', 'ran all steps')
  else
    call finish(trim(status), failure_step, failure_step, trim(reason), trim(variable), trim(errmsg))
  end if

contains

  subroutine read_config(file, stat, errmsg)
    character(len=*), intent(in) :: file
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: u
    character(len=512) :: iomsg
    open (newunit=u, file=file, status='old', action='read', iostat=stat, iomsg=iomsg)
    if (stat /= 0) then
      errmsg = 'cannot open '//file//': '//trim(iomsg)
      return
    end if
    read (u, nml=scm_model, iostat=stat, iomsg=iomsg)
    if (stat > 0) errmsg = file//': &scm_model: '//trim(iomsg)
    if (stat <= 0) then
      rewind (u)
      read (u, nml=scm_run, iostat=stat, iomsg=iomsg)
      if (stat > 0) errmsg = file//': &scm_run: '//trim(iomsg)
    end if
    if (stat <= 0) then
      rewind (u)
      read (u, nml=scm_failure, iostat=stat, iomsg=iomsg)
      if (stat > 0) errmsg = file//': &scm_failure: '//trim(iomsg)
    end if
    close (u)
    if (stat < 0) stat = 0      ! a group left out keeps its defaults
  end subroutine read_config

  subroutine validate(stat, errmsg)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    stat = 1
    if (n_columns < 1 .or. n_levels < 2) then
      errmsg = '&scm_model: n_columns must be >= 1 and n_levels >= 2'
    else if (.not. (tau_rad > 0 .and. tau_conv > 0 .and. heating_tau > 0 .and. &
                    diffusion >= 0 .and. heating_sd >= 0)) then
      errmsg = '&scm_model: time scales must be > 0, diffusion and heating_sd >= 0'
    else if (mode /= 'truth' .and. mode /= 'coarse') then
      errmsg = "&scm_run: mode must be 'truth' or 'coarse', got '"//trim(mode)//"'"
    else if (closure /= 'nn' .and. closure /= 'none') then
      errmsg = "&scm_run: closure must be 'nn' or 'none', got '"//trim(closure)//"'"
    else if (.not. (dt > 0) .or. n_steps < 1 .or. spinup_steps < 0 .or. sample_interval < 1 &
             .or. output_interval < 1) then
      errmsg = '&scm_run: dt > 0, n_steps >= 1, spinup_steps >= 0, intervals >= 1'
    else if (inject_nan_step /= -1 .and. (inject_nan_column < 1 .or. &
                                          inject_nan_column > n_columns)) then
      errmsg = '&scm_run: inject_nan_column must be in 1 .. n_columns'
    else if (.not. (max_abs > 0)) then
      errmsg = '&scm_failure: max_abs must be > 0'
    else
      stat = 0
    end if
  end subroutine validate

  !> Truth runs start from rest; coarse runs from snapshot init_index of a truth.bin.
  subroutine initial_state(stat, errmsg)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer(i8) :: header(4)
    integer :: u
    integer(i8) :: pos
    character(len=512) :: iomsg
    stat = 0
    if (mode == 'truth') then
      t = spread(teq, 2, n_columns)
      return
    end if
    if (len_trim(init_file) == 0) then
      t = spread(teq, 2, n_columns)
      return
    end if
    open (newunit=u, file=trim(init_file), access='stream', form='unformatted', status='old', &
          action='read', iostat=stat, iomsg=iomsg)
    if (stat /= 0) then
      errmsg = 'cannot open init_file '//trim(init_file)//': '//trim(iomsg)
      return
    end if
    read (u, iostat=stat) header
    if (stat /= 0 .or. header(1) /= MAGIC .or. header(2) /= n_levels .or. &
        header(3) /= n_columns) then
      errmsg = trim(init_file)//': not a truth file of this model (n_levels, n_columns)'
      stat = 1
    else if (init_index < 1 .or. init_index > header(4)) then
      write (errmsg, '(a,i0,a,i0,a)') trim(init_file)//': init_index ', init_index, &
        ' is outside 1 ..', header(4), ' snapshots'
      stat = 1
    else
      pos = 1 + 4 * 8 + int(init_index - 1, i8) * n_levels * n_columns * 8
      read (u, pos=pos, iostat=stat, iomsg=iomsg) t
      if (stat /= 0) errmsg = trim(init_file)//': '//trim(iomsg)
    end if
    close (u)
  end subroutine initial_state

  !> The lowest level's heating, an Ornstein-Uhlenbeck process per column: a pure function of
  !> (seed, column, step), so a run repeats from its namelist.
  subroutine advance_heating(step)
    integer, intent(in) :: step
    integer :: c
    real(dp) :: a
    a = exp(-dt / heating_tau)
    do c = 1, n_columns
      heat(c) = heating_mean + a * (heat(c) - heating_mean) + &
                heating_sd * sqrt(1 - a**2) * normal(seed, c, step)
    end do
  end subroutine advance_heating

  pure real(dp) function normal(s, c, k)
    integer(i8), intent(in) :: s
    integer, intent(in) :: c, k
    real(dp) :: u1, u2
    u1 = uniform(s * 1000003_i8 + c, 2_i8 * k)
    u2 = uniform(s * 1000003_i8 + c, 2_i8 * k + 1)
    normal = sqrt(-2 * log(u1)) * cos(2 * 3.141592653589793_dp * u2)
  end function normal

  !> splitmix64 of (stream, index), in (0, 1)
  pure real(dp) function uniform(stream, index)
    integer(i8), intent(in) :: stream, index
    integer(i8) :: z
    z = stream * (-7046029254386353131_i8) + index
    z = ieor(z, shiftr(z, 30)) * (-4658895280553007687_i8)
    z = ieor(z, shiftr(z, 27)) * (-7723592293110705685_i8)
    z = ieor(z, shiftr(z, 31))
    uniform = (real(shiftr(z, 11), dp) + 0.5_dp) / 2.0_dp**53
  end function uniform

  !> The convective adjustment of the truth (the term a network learns).
  pure subroutine adjustment(temp, qq)
    real(dp), intent(in) :: temp(:, :)
    real(dp), intent(out) :: qq(:, :)
    integer :: l
    real(dp) :: excess(size(temp, 2))
    qq = 0
    do l = 1, size(temp, 1) - 1
      excess = max(temp(l, :) - temp(l + 1, :) - gamma, 0.0_dp) / (2 * tau_conv)
      qq(l, :) = qq(l, :) - excess
      qq(l + 1, :) = qq(l + 1, :) + excess
    end do
  end subroutine adjustment

  subroutine tendency(temp, k, stat)
    real(dp), intent(in) :: temp(:, :)
    real(dp), intent(out) :: k(:, :)
    integer, intent(out) :: stat
    integer :: l, nl
    integer(i8) :: c0, c1
    stat = 0
    nl = size(temp, 1)
    if (mode == 'truth') then
      call adjustment(temp, q)
    else if (closure == 'nn') then
      call system_clock(c0)
      call colnn_coupler_run(temp, q, errmsg, stat, step=step)
      call system_clock(c1)
      nn_s = nn_s + real(c1 - c0, dp) / rate
      if (stat /= 0) return
    else
      q = 0
    end if
    do l = 1, nl
      k(l, :) = (teq(l) - temp(l, :)) / tau_rad + q(l, :)
      if (l > 1) k(l, :) = k(l, :) + diffusion * (temp(l - 1, :) - temp(l, :))
      if (l < nl) k(l, :) = k(l, :) + diffusion * (temp(l + 1, :) - temp(l, :))
    end do
    k(1, :) = k(1, :) + heat
  end subroutine tendency

  real(dp) function injected()
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan, ieee_positive_inf, &
                                             ieee_negative_inf
    select case (inject_value)
    case ('inf')
      injected = ieee_value(1.0_dp, ieee_positive_inf)
    case ('-inf')
      injected = ieee_value(1.0_dp, ieee_negative_inf)
    case default
      injected = ieee_value(1.0_dp, ieee_quiet_nan)
    end select
  end function injected

  subroutine fail(at, why, what)
    integer, intent(in) :: at
    character(len=*), intent(in) :: why, what
    status = 'failed'
    failure_step = at
    reason = why
    variable = what
  end subroutine fail

  subroutine write_truth(stat, errmsg)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: u
    character(len=512) :: iomsg
    character(len=:), allocatable :: final, tmp
    final = trim(output_dir)//'/truth.bin'
    tmp = final//'.tmp'
    open (newunit=u, file=tmp, access='stream', form='unformatted', status='replace', &
          action='write', iostat=stat, iomsg=iomsg)
    if (stat == 0) write (u, iostat=stat, iomsg=iomsg) [int(MAGIC, i8), int(n_levels, i8), &
      int(n_columns, i8), int(i_samp, i8)], tsnap(:, :, 1:i_samp), qsnap(:, :, 1:i_samp)
    if (stat == 0) close (u, iostat=stat, iomsg=iomsg)
    if (stat == 0) stat = c_rename(tmp//c_null_char, final//c_null_char)
    if (stat /= 0) errmsg = 'cannot write '//final//': '//trim(iomsg)
  end subroutine write_truth

  !> result.json (docs/host-protocol.md), written to a temporary name and renamed.
  subroutine finish(st, steps, at, why, what, message)
    character(len=*), intent(in) :: st, why, what, message
    integer, intent(in) :: steps, at
    integer :: u, ios
    character(len=:), allocatable :: final, tmp
    character(len=32) :: num
    call system_clock(clock1)
    wall = real(clock1 - clock0, dp) / rate
    final = trim(output_dir)//'/result.json'
    tmp = final//'.tmp'
    open (newunit=u, file=tmp, status='replace', action='write', iostat=ios)
    if (ios /= 0) return
    write (u, '(a)') '{'
    write (u, '(a)') '  "schema": 1, "host": "scm", "mode": "'//trim(mode)//'",'
    if (mode == 'coarse') then
      write (u, '(a)') '  "closure": "'//trim(closure)//'",'
    else
      write (u, '(a)') '  "closure": null,'
    end if
    write (u, '(a)') '  "status": "'//st//'",'
    write (num, '(i0)') steps
    write (u, '(a)') '  "steps": '//trim(num)//','
    write (num, '(i0)') n_total_steps()
    write (u, '(a)') '  "max_steps": '//trim(num)//','
    if (at >= 0) then
      write (num, '(i0)') at
    else
      num = 'null'
    end if
    write (u, '(a)') '  "failure_step": '//trim(num)//','
    write (u, '(a)') '  "reason": '//quoted_or_null(why)//', "variable": '//quoted_or_null(what)//','
    write (u, '(a)') '  "message": "'//escaped(message)//'",'
    write (num, '(es24.16e3)') wall
    write (u, '(a)') '  "wall_time_s": '//trim(adjustl(num))//','
    write (num, '(es24.16e3)') nn_s
    write (u, '(a)') '  "nn_time_s": '//trim(adjustl(num))//','
    write (num, '(i0)') seed
    write (u, '(a)') '  "seed": '//trim(num)//', "n_ranks": 1,'
    write (num, '(i0)') n_columns
    write (u, '(a)') '  "n_columns": '//trim(num)//', "diagnostics": null,'
    if (n_rec > 0 .and. allocated(mean_t)) then
      write (num, '(es24.16e3)') sum(mean_t(1:n_rec)) / n_rec
    else
      num = '0'
    end if
    write (u, '(a)') '  "extra": {"mean_t": '//trim(adjustl(num))//'}'
    write (u, '(a)') '}'
    close (u, iostat=ios)
    if (ios == 0) ios = c_rename(tmp//c_null_char, final//c_null_char)
  end subroutine finish

  integer function n_total_steps()
    n_total_steps = n_steps
    if (mode == 'truth') n_total_steps = spinup_steps + n_steps
  end function n_total_steps

  function quoted_or_null(s) result(out)
    character(len=*), intent(in) :: s
    character(len=:), allocatable :: out
    if (len_trim(s) == 0) then
      out = 'null'
    else
      out = '"'//escaped(s)//'"'
    end if
  end function quoted_or_null

  function escaped(s) result(out)
    character(len=*), intent(in) :: s
    character(len=:), allocatable :: out
    integer :: i
    out = ''
    do i = 1, len_trim(s)
      select case (s(i:i))
      case ('"', '\')
        out = out//'\'//s(i:i)
      case default
        if (iachar(s(i:i)) >= 32) out = out//s(i:i)
      end select
    end do
  end function escaped
end program colnn_scm
