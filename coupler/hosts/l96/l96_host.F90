!> The two-scale Lorenz-96 host program: a truth mode that writes training data and a
!> climatology sample, and a coarse mode whose coupling term comes from a closure (the NN through
!> colnn_coupler, none, or a cubic polynomial) with steps-to-failure checks. The K slow variables
!> are the host's "columns", split over MPI ranks with halos; every global sum is taken on rank 0
!> in one order, so results do not depend on the number of ranks.
!>
!> Configuration: one namelist file with the groups &l96_model, &l96_run, &l96_failure and (for
!> closure = 'nn') the coupler's &colnn_coupler. Output in output_dir: result.json (atomic),
!> diagnostics.h5 (coarse) or truth.h5 (truth), each written to a temporary name and renamed.
module l96_host
  use, intrinsic :: iso_fortran_env, only: error_unit
  use mpi_f08
  use colnn, only: wp
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize, &
                           colnn_coupler_config_t, colnn_coupler_get_config, &
                           colnn_coupler_timers
  use colnn_mpi, only: decompose_columns
  use host_common
  use host_h5
  use host_mpi
  implicit none
  private

  public :: l96_host_main, l96_write_defaults, l96_print_config

  type :: l96_config_t
    ! &l96_model
    integer :: k = 8, j = 32
    real(dp) :: f = 20, h = 1, b = 10, c = 10
    ! &l96_run
    character(len=16) :: mode = 'coarse'         !< 'truth' | 'coarse'
    character(len=16) :: closure = 'nn'          !< coarse: 'nn' | 'none' | 'cubic'
    character(len=16) :: inputs = 'stencil'      !< NN inputs per column: 'local' | 'stencil' | 'full'
    integer :: stencil_halfwidth = 1
    real(dp) :: dt = 0.005_dp
    integer :: n_steps = 1000, spinup_steps = 0
    integer(i8) :: seed = 1
    character(len=1024) :: init_file = '', output_dir = '.'
    integer :: init_index = 1
    integer :: output_interval = 10, sample_interval = 10
    real(dp) :: cubic_coeffs(4) = 0                !< U = c1 + c2 X + c3 X^2 + c4 X^3
    integer :: inject_nan_step = -1, inject_nan_column = 1
    character(len=8) :: inject_value = 'nan'        !< what is injected: nan, inf or -inf
    ! &l96_failure
    real(dp) :: max_abs = 50
    logical :: drift_check = .false.
    integer :: drift_window = 1000, drift_sample_interval = 10
    real(dp) :: drift_sigma = 5
    real(dp) :: clim_mean = 0, clim_std = 0, sd_window_mean = 0, sd_window_std = 0
  end type l96_config_t

  !> Per-rank state of a run.
  type :: l96_state_t
    type(MPI_Comm) :: comm
    integer :: rank = 0, nranks = 1, first = 1, n = 0    !< this rank owns X_first .. X_first+n-1
    integer :: hl = 2, hr = 1                            !< halo widths of x
    integer :: w = 0, n_in = 1, n_out = 1, ncol = 0      !< stencil halfwidth, NN sizes, NN columns
    real(dp), allocatable :: x(:, :), xs(:, :)           !< (1, 1-hl : n+hr)
    real(dp), allocatable :: k1(:), k2(:), k3(:), k4(:), u(:)
    real(dp), allocatable :: u1(:, :)                    !< the closure at stage 1, (1, n)
    real(dp), allocatable :: y(:, :)                     !< truth: (1, 0 : J*n+2)
    real(wp), allocatable :: nn_in(:, :), nn_out(:, :)
    integer, allocatable :: counts(:), displs(:)
    real(dp), allocatable :: xg(:, :), ug(:, :)          !< gathered on rank 0: (1, K)
    real(dp) :: t_nn = 0, t_start = 0, t_io = 0
  end type l96_state_t

  character(len=*), parameter :: GROUPS(4) = [character(len=16) :: 'l96_model', 'l96_run', &
                                               'l96_failure', 'colnn_coupler']

contains

  !> Runs the host on the namelist file `path`; exit_code 0: completed or failed (the outcome
  !> is in result.json), 1: error (the run could not start or could not go on).
  subroutine l96_host_main(path, exit_code)
    character(len=*), intent(in) :: path
    integer, intent(out) :: exit_code
    type(l96_config_t) :: cfg
    type(l96_state_t) :: s
    type(run_result_t) :: r
    character(len=1024) :: errmsg
    character(len=256) :: msg2
    integer :: stat, ierr

    s%comm = MPI_COMM_WORLD
    call MPI_Comm_rank(s%comm, s%rank, ierr)
    call MPI_Comm_size(s%comm, s%nranks, ierr)
    s%t_start = wall_clock()
    r%host = 'l96'
    r%n_ranks = s%nranks
    r%config_hash = hash_file(path)

    call read_config(path, cfg, stat, errmsg)
    r%mode = cfg%mode
    if (cfg%mode == 'coarse') r%closure = cfg%closure
    r%seed = cfg%seed
    r%max_steps = cfg%n_steps
    r%n_columns = cfg%k
    if (stat == 0) call setup(cfg, s, stat, errmsg)
    if (stat == 0 .and. cfg%mode == 'coarse' .and. cfg%closure == 'nn') then
      call coupler_setup(path, cfg, s, r, stat, errmsg)
    end if
    if (share_error(stat /= 0, errmsg, s%comm)) then
      r%wall_s = wall_clock() - s%t_start
      call finish_run('colnn_l96', cfg%output_dir, s%rank, r, exit_code, errmsg)
      return
    end if

    if (cfg%mode == 'truth') then
      call run_truth(cfg, s, r, stat, errmsg)
    else
      call run_coarse(cfg, s, r, stat, errmsg)
    end if
    if (cfg%mode == 'coarse' .and. cfg%closure == 'nn') then
      call record_coupler_timers(r, s%comm)
      call colnn_coupler_finalize(msg2, ierr)
    end if
    if (stat /= 0) then
      r%wall_s = wall_clock() - s%t_start
      call finish_run('colnn_l96', cfg%output_dir, s%rank, r, exit_code, errmsg)
      return
    end if
    r%wall_s = wall_clock() - s%t_start
    r%io_s = s%t_io
    r%nn_s = s%t_nn
    r%dynamics_s = r%wall_s - r%nn_s - r%io_s
    call finish_run('colnn_l96', cfg%output_dir, s%rank, r, exit_code)
  end subroutine l96_host_main

  !> `colnn_l96 --print-config CONFIG.nml`: reads CONFIG.nml as a run does and writes every
  !> group with the values the run would use (what was read, defaults for the rest); starts
  !> nothing. `stat` /= 0 with `errmsg` when the file cannot be read or a value is invalid.
  subroutine l96_print_config(path, unit, stat, errmsg)
    character(len=*), intent(in) :: path   !! the namelist file
    integer, intent(in) :: unit            !! where the groups are written
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(l96_config_t) :: cfg
    call read_config(path, cfg, stat, errmsg, unit)
  end subroutine l96_print_config

  !> The namelist groups with their defaults (`colnn_l96 --defaults`): the harness checks its
  !> configuration keys against this list.
  subroutine l96_write_defaults(unit)
    integer, intent(in) :: unit
    type(l96_config_t) :: cfg
    integer :: stat
    character(len=256) :: errmsg
    call read_config('', cfg, stat, errmsg, unit)
  end subroutine l96_write_defaults

  subroutine read_config(path, cfg, stat, errmsg, defaults_unit)
    character(len=*), intent(in) :: path
    type(l96_config_t), intent(inout) :: cfg
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer, intent(in), optional :: defaults_unit
    integer :: k, j, stencil_halfwidth, n_steps, spinup_steps, init_index, output_interval, &
               sample_interval, inject_nan_step, inject_nan_column, drift_window, &
               drift_sample_interval
    real(dp) :: f, h, b, c, dt, cubic_coeffs(4), max_abs, drift_sigma, clim_mean, clim_std, &
                sd_window_mean, sd_window_std
    character(len=16) :: mode, closure, inputs
    character(len=8) :: inject_value
    character(len=1024) :: init_file, output_dir
    integer(i8) :: seed
    logical :: drift_check, found(size(GROUPS))
    namelist /l96_model/ k, j, f, h, b, c
    namelist /l96_run/ mode, closure, inputs, stencil_halfwidth, dt, n_steps, spinup_steps, &
      seed, init_file, init_index, output_dir, output_interval, sample_interval, cubic_coeffs, &
      inject_nan_step, inject_nan_column, inject_value
    namelist /l96_failure/ max_abs, drift_check, drift_window, drift_sample_interval, &
      drift_sigma, clim_mean, clim_std, sd_window_mean, sd_window_std

    stat = 0
    if (len(path) > 0) call check_groups(path, GROUPS, stat, errmsg, found)
    if (stat /= 0) return
    k = cfg%k; j = cfg%j; f = cfg%f; h = cfg%h; b = cfg%b; c = cfg%c
    call read_group('l96_model')
    if (stat /= 0) return
    mode = cfg%mode; closure = cfg%closure; inputs = cfg%inputs
    stencil_halfwidth = cfg%stencil_halfwidth; dt = cfg%dt; n_steps = cfg%n_steps
    spinup_steps = cfg%spinup_steps; seed = cfg%seed; init_file = cfg%init_file
    init_index = cfg%init_index; output_dir = cfg%output_dir
    output_interval = cfg%output_interval; sample_interval = cfg%sample_interval
    cubic_coeffs = cfg%cubic_coeffs; inject_nan_step = cfg%inject_nan_step
    inject_nan_column = cfg%inject_nan_column; inject_value = cfg%inject_value
    call read_group('l96_run')
    if (stat /= 0) return
    max_abs = cfg%max_abs; drift_check = cfg%drift_check; drift_window = cfg%drift_window
    drift_sample_interval = cfg%drift_sample_interval; drift_sigma = cfg%drift_sigma
    clim_mean = cfg%clim_mean; clim_std = cfg%clim_std; sd_window_mean = cfg%sd_window_mean
    sd_window_std = cfg%sd_window_std
    call read_group('l96_failure')
    if (stat /= 0) return
    cfg = l96_config_t(k, j, f, h, b, c, mode, closure, inputs, stencil_halfwidth, dt, &
                       n_steps, spinup_steps, seed, init_file, output_dir, init_index, &
                       output_interval, sample_interval, cubic_coeffs, inject_nan_step, &
                       inject_nan_column, inject_value, max_abs, drift_check, drift_window, &
                       drift_sample_interval, drift_sigma, clim_mean, clim_std, &
                       sd_window_mean, sd_window_std)
    call validate(cfg, path, stat, errmsg)
  contains
    !> A group may be absent (defaults), but an unknown key or a bad value is an error.
    subroutine read_group(group)
      character(len=*), intent(in) :: group
      integer :: u
      character(len=512) :: iomsg
      if (len(path) == 0) then
        if (present(defaults_unit)) call write_group(group)
        stat = 0
        return
      end if
      open (newunit=u, file=path, status='old', action='read', iostat=stat, iomsg=iomsg)
      if (stat /= 0) then
        errmsg = 'cannot open '//trim(path)//': '//trim(iomsg)
        return
      end if
      select case (group)
      case ('l96_model')
        read (u, nml=l96_model, iostat=stat, iomsg=iomsg)
      case ('l96_run')
        read (u, nml=l96_run, iostat=stat, iomsg=iomsg)
      case ('l96_failure')
        read (u, nml=l96_failure, iostat=stat, iomsg=iomsg)
      end select
      close (u)
      if (stat < 0 .and. .not. any(found .and. GROUPS == group)) then
        stat = 0    ! the group is not in the file: its defaults
      else if (stat < 0) then
        errmsg = trim(path)//': namelist &'//group//' could not be read to its end (a '// &
                 'missing /, a bad last value, or the last line without a newline)'
      else if (stat > 0) then
        errmsg = trim(path)//': namelist &'//group//': '//trim(iomsg)
      end if
      if (stat == 0 .and. present(defaults_unit)) call write_group(group)
    end subroutine read_group

    !> The group's values as the host holds them: its defaults, or what was read.
    subroutine write_group(group)
      character(len=*), intent(in) :: group
      select case (group)
      case ('l96_model')
        write (defaults_unit, nml=l96_model)
      case ('l96_run')
        write (defaults_unit, nml=l96_run)
      case ('l96_failure')
        write (defaults_unit, nml=l96_failure)
      end select
    end subroutine write_group
  end subroutine read_config

  subroutine validate(cfg, path, stat, errmsg)
    type(l96_config_t), intent(in) :: cfg
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    stat = 1
    if (cfg%k < 4) then
      errmsg = bad('l96_model', 'k', 'must be >= 4, got '//itoa(cfg%k))
    else if (cfg%j < 1) then
      errmsg = bad('l96_model', 'j', 'must be >= 1, got '//itoa(cfg%j))
    else if (.not. (cfg%b > 0 .and. cfg%c > 0 .and. abs(cfg%f) <= huge(1.0_dp) .and. &
                    abs(cfg%h) <= huge(1.0_dp))) then
      errmsg = bad('l96_model', 'b, c, f, h', 'b and c must be > 0, f and h finite')
    else if (all(cfg%mode /= [character(len=16) :: 'truth', 'coarse'])) then
      errmsg = bad('l96_run', 'mode', "must be 'truth' or 'coarse', got '"//trim(cfg%mode)//"'")
    else if (all(cfg%closure /= [character(len=16) :: 'nn', 'none', 'cubic'])) then
      errmsg = bad('l96_run', 'closure', "must be 'nn', 'none' or 'cubic', got '"// &
                   trim(cfg%closure)//"'")
    else if (all(cfg%inputs /= [character(len=16) :: 'local', 'stencil', 'full'])) then
      errmsg = bad('l96_run', 'inputs', "must be 'local', 'stencil' or 'full', got '"// &
                   trim(cfg%inputs)//"'")
    else if (cfg%stencil_halfwidth < 1 .or. 2 * cfg%stencil_halfwidth + 1 > cfg%k) then
      errmsg = bad('l96_run', 'stencil_halfwidth', 'must be in 1 .. (k-1)/2, got '// &
                   itoa(cfg%stencil_halfwidth))
    else if (.not. (cfg%dt > 0 .and. cfg%dt <= 0.1_dp)) then
      errmsg = bad('l96_run', 'dt', 'must be in (0, 0.1]')
    else if (cfg%n_steps < 1) then
      errmsg = bad('l96_run', 'n_steps', 'must be >= 1, got '//itoa(cfg%n_steps))
    else if (cfg%spinup_steps < 0) then
      errmsg = bad('l96_run', 'spinup_steps', 'must be >= 0')
    else if (cfg%output_interval < 1 .or. cfg%sample_interval < 1) then
      errmsg = bad('l96_run', 'output_interval, sample_interval', 'must be >= 1')
    else if (cfg%init_index < 1) then
      errmsg = bad('l96_run', 'init_index', 'must be >= 1 (Fortran order)')
    else if (len_trim(cfg%output_dir) == 0) then
      errmsg = bad('l96_run', 'output_dir', 'must not be empty')
    else if (cfg%inject_nan_step /= -1 .and. (cfg%inject_nan_column < 1 .or. &
                                              cfg%inject_nan_column > cfg%k)) then
      errmsg = bad('l96_run', 'inject_nan_column', 'must be in 1 .. k')
    else if (.not. is_injectable(cfg%inject_value)) then
      errmsg = bad('l96_run', 'inject_value', "must be 'nan', 'inf' or '-inf'")
    else if (.not. (cfg%max_abs > 0)) then
      errmsg = bad('l96_failure', 'max_abs', 'must be > 0')
    else if (cfg%drift_check .and. (cfg%drift_window < 1 .or. cfg%drift_sample_interval < 1 &
             .or. mod(cfg%drift_window, cfg%drift_sample_interval) /= 0)) then
      errmsg = bad('l96_failure', 'drift_window', 'must be a positive multiple of '// &
                   'drift_sample_interval')
    else if (cfg%drift_check .and. .not. (cfg%drift_sigma > 0 .and. cfg%clim_std > 0 .and. &
             cfg%sd_window_mean > 0 .and. cfg%sd_window_std > 0)) then
      errmsg = bad('l96_failure', 'drift_sigma, clim_std, sd_window_mean, sd_window_std', &
                   'the drift test needs all of them > 0 (from a calibration on truth runs)')
    else
      stat = 0
      errmsg = ''
    end if
  contains
    function bad(group, key, what) result(m)
      character(len=*), intent(in) :: group, key, what
      character(len=:), allocatable :: m
      m = trim(path)//': &'//group//': '//key//' '//what
    end function bad
  end subroutine validate

  !> Decomposition, halos and every array of the run (nothing is allocated after this).
  subroutine setup(cfg, s, stat, errmsg)
    type(l96_config_t), intent(in) :: cfg
    type(l96_state_t), intent(inout) :: s
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: i
    real(dp), allocatable :: init(:)
    integer, allocatable :: shp(:)
    call decompose_columns(cfg%k, s%comm, s%first, s%n, stat, errmsg)
    if (stat /= 0) return
    s%w = 0
    if (cfg%inputs == 'stencil') s%w = cfg%stencil_halfwidth
    s%hl = max(2, s%w)
    s%hr = max(1, s%w)
    ! the smallest block of the balanced split, so that every rank takes the same decision
    if (cfg%k / s%nranks < max(s%hl, s%hr, 2)) then
      stat = 1
      errmsg = 'k = '//itoa(cfg%k)//' over '//itoa(s%nranks)//' ranks leaves a rank '// &
               itoa(cfg%k / s%nranks)//' columns, fewer than its halo ('// &
               itoa(max(s%hl, s%hr, 2))//'): use fewer ranks'
      return
    end if
    if (cfg%mode == 'coarse' .and. cfg%closure == 'nn' .and. cfg%inputs == 'full' .and. &
        s%nranks > 1) then
      stat = 1
      errmsg = "inputs = 'full' (one column holding the whole state) runs on one rank only"
      return
    end if
    allocate (s%x(1, 1 - s%hl:s%n + s%hr), s%xs(1, 1 - s%hl:s%n + s%hr), source=0.0_dp)
    allocate (s%k1(s%n), s%k2(s%n), s%k3(s%n), s%k4(s%n), s%u(s%n), s%u1(1, s%n), source=0.0_dp)
    if (cfg%inputs == 'full') then
      s%n_in = cfg%k
      s%n_out = cfg%k
      s%ncol = 1
    else
      s%n_in = 2 * s%w + 1
      s%n_out = 1
      s%ncol = s%n
    end if
    allocate (s%nn_in(s%n_in, s%ncol), s%nn_out(s%n_out, s%ncol), source=0.0_wp)
    call gather_layout(1, s%n, s%comm, s%counts, s%displs)
    allocate (s%xg(1, merge(cfg%k, 1, s%rank == 0)), s%ug(1, merge(cfg%k, 1, s%rank == 0)))
    if (cfg%mode == 'truth') allocate (s%y(1, 0:cfg%j * s%n + 2))

    ! initial state: from a truth file (column init_index of its x), or keyed random numbers
    if (len_trim(cfg%init_file) > 0) then
      call h5_dataset_shape(trim(cfg%init_file), 'x', shp, stat, errmsg)
      if (stat == 0) then
        if (size(shp) /= 2 .or. shp(1) /= cfg%k) then
          stat = 1
          errmsg = trim(cfg%init_file)//': dataset x must be (samples, k = '//itoa(cfg%k)//')'
        else if (cfg%init_index > shp(2)) then
          stat = 1
          errmsg = trim(cfg%init_file)//': init_index '//itoa(cfg%init_index)//' > '// &
                   itoa(shp(2))//' samples'
        end if
      end if
      if (stat /= 0) return
      allocate (init(product(shp)))
      call h5_read_doubles(trim(cfg%init_file), 'x', init, stat, errmsg)
      if (stat /= 0) return
      s%x(1, 1:s%n) = init((cfg%init_index - 1) * cfg%k + s%first: &
                           (cfg%init_index - 1) * cfg%k + s%first + s%n - 1)
      if (.not. all(abs(s%x(1, 1:s%n)) <= huge(1.0_dp))) then
        stat = 1
        errmsg = trim(cfg%init_file)//': the initial state has non-finite values'
        return
      end if
    else
      do i = 1, s%n
        s%x(1, i) = cfg%f / 4 + 2 * host_normal(cfg%seed, 1_i8, int(s%first + i - 1, i8))
      end do
    end if
    if (cfg%mode == 'truth') then
      do i = 1, cfg%j * s%n
        s%y(1, i) = 0.1_dp * host_normal(cfg%seed, 2_i8, int((s%first - 1) * cfg%j + i, i8))
      end do
    end if
    stat = 0
  end subroutine setup

  subroutine coupler_setup(path, cfg, s, r, stat, errmsg)
    character(len=*), intent(in) :: path
    type(l96_config_t), intent(in) :: cfg
    type(l96_state_t), intent(inout) :: s
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(colnn_coupler_config_t) :: ccfg
    call colnn_coupler_init(path, s%n_in, s%n_out, errmsg, stat)
    if (stat /= 0) then
      errmsg = trim(errmsg)//' (the '//trim(cfg%inputs)//' inputs of this host)'
      return
    end if
    ! the model hash: of the model file, or of an ensemble's list file
    call colnn_coupler_get_config(ccfg)
    if (len_trim(ccfg%model_file) > 0) r%model_hash = hash_file(ccfg%model_file)
    if (len_trim(ccfg%ensemble) > 0) r%model_hash = hash_file(ccfg%ensemble)
  end subroutine coupler_setup

  ! ---------------------------------------------------------------------------------------
  ! dynamics on this rank's columns (x has valid halos)

  pure subroutine slow_tendency(n, f, x, u, dx)
    integer, intent(in) :: n
    real(dp), intent(in) :: f, x(-1:), u(:)
    real(dp), intent(out) :: dx(:)
    integer :: k
    do k = 1, n
      dx(k) = -x(k - 1) * (x(k - 2) - x(k + 1)) - x(k) + f + u(k)
    end do
  end subroutine slow_tendency

  !> The closure U(x) on this rank's columns at one RK stage. stat /= 0: the NN failed.
  subroutine closure(cfg, s, step, x, u, stat, errmsg)
    type(l96_config_t), intent(in) :: cfg
    type(l96_state_t), intent(inout) :: s
    integer, intent(in) :: step
    real(dp), intent(inout) :: x(:, 1 - s%hl:)
    real(dp), intent(out) :: u(:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: k, i
    real(dp) :: t0
    stat = 0
    select case (cfg%closure)
    case ('none')
      u = 0
    case ('cubic')
      do k = 1, s%n
        u(k) = cfg%cubic_coeffs(1) + x(1, k) * (cfg%cubic_coeffs(2) + x(1, k) * &
               (cfg%cubic_coeffs(3) + x(1, k) * cfg%cubic_coeffs(4)))
      end do
    case ('nn')
      if (cfg%inputs == 'full') then
        s%nn_in(:, 1) = real(x(1, 1:s%n), wp)
      else
        do k = 1, s%n
          do i = -s%w, s%w
            s%nn_in(i + s%w + 1, k) = real(x(1, k + i), wp)
          end do
        end do
      end if
      t0 = wall_clock()
      call colnn_coupler_run(s%nn_in, s%nn_out, errmsg, stat, column_offset=s%first - 1, &
                             step=step)
      s%t_nn = s%t_nn + (wall_clock() - t0)
      if (cfg%inputs == 'full') then
        u = real(s%nn_out(:, 1), dp)
      else
        u = real(s%nn_out(1, :), dp)
      end if
    end select
  end subroutine closure

  !> One RK4 step of the coarse model, the closure at every stage (halo exchange before each).
  subroutine coarse_step(cfg, s, step, stat, errmsg)
    type(l96_config_t), intent(in) :: cfg
    type(l96_state_t), intent(inout) :: s
    integer, intent(in) :: step
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(dp) :: dt
    dt = cfg%dt
    call ring_exchange(s%x, s%n, s%hl, s%hr, s%comm)
    call closure(cfg, s, step, s%x, s%u, stat, errmsg)
    if (share_error(stat /= 0, errmsg, s%comm)) then
      stat = 1
      return
    end if
    s%u1(1, :) = s%u
    call slow_tendency(s%n, cfg%f, s%x(1, -1:), s%u, s%k1)
    s%xs(1, 1:s%n) = s%x(1, 1:s%n) + 0.5_dp * dt * s%k1
    call ring_exchange(s%xs, s%n, s%hl, s%hr, s%comm)
    call closure(cfg, s, step, s%xs, s%u, stat, errmsg)
    if (share_error(stat /= 0, errmsg, s%comm)) then
      stat = 1
      return
    end if
    call slow_tendency(s%n, cfg%f, s%xs(1, -1:), s%u, s%k2)
    s%xs(1, 1:s%n) = s%x(1, 1:s%n) + 0.5_dp * dt * s%k2
    call ring_exchange(s%xs, s%n, s%hl, s%hr, s%comm)
    call closure(cfg, s, step, s%xs, s%u, stat, errmsg)
    if (share_error(stat /= 0, errmsg, s%comm)) then
      stat = 1
      return
    end if
    call slow_tendency(s%n, cfg%f, s%xs(1, -1:), s%u, s%k3)
    s%xs(1, 1:s%n) = s%x(1, 1:s%n) + dt * s%k3
    call ring_exchange(s%xs, s%n, s%hl, s%hr, s%comm)
    call closure(cfg, s, step, s%xs, s%u, stat, errmsg)
    if (share_error(stat /= 0, errmsg, s%comm)) then
      stat = 1
      return
    end if
    call slow_tendency(s%n, cfg%f, s%xs(1, -1:), s%u, s%k4)
    s%x(1, 1:s%n) = s%x(1, 1:s%n) + dt / 6 * (s%k1 + 2 * s%k2 + 2 * s%k3 + s%k4)
    stat = 0
  end subroutine coarse_step

  ! ---------------------------------------------------------------------------------------
  ! coarse mode: steps to failure

  subroutine run_coarse(cfg, s, r, stat, errmsg)
    type(l96_config_t), intent(in) :: cfg
    type(l96_state_t), intent(inout) :: s
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: step, n_out, i_out, n_win, i_win, fail_flag, local_fail, kk, ierr
    real(dp), allocatable :: d_time(:), d_mean(:), d_std(:), d_bias(:), d_rmse(:), d_energy(:), &
                             d_maxabs(:), d_umean(:), w_time(:), w_zmean(:), w_zstd(:)
    real(dp) :: wsum, wsq, wcount, wmean, wstd, zm, zs, maxabs
    character(len=64) :: reason, variable

    n_out = cfg%n_steps / cfg%output_interval + 2
    n_win = 0
    if (cfg%drift_check) n_win = cfg%n_steps / cfg%drift_window
    allocate (d_time(n_out), d_mean(n_out), d_std(n_out), d_bias(n_out), d_rmse(n_out), &
              d_energy(n_out), d_maxabs(n_out), d_umean(n_out), source=ieee_nan())
    allocate (w_time(n_win), w_zmean(n_win), w_zstd(n_win), source=ieee_nan())
    i_out = 0
    i_win = 0
    wsum = 0; wsq = 0; wcount = 0
    s%u1 = ieee_nan()
    call record(0)
    stat = 0
    reason = ''
    variable = ''
    r%status = 'completed'
    do step = 1, cfg%n_steps
      call coarse_step(cfg, s, step, stat, errmsg)
      if (stat /= 0) then
        call fail_at(step, 'nn_error', 'u', errmsg)
        exit
      end if
      if (step == cfg%inject_nan_step) then
        kk = cfg%inject_nan_column - s%first + 1
        if (kk >= 1 .and. kk <= s%n) s%x(1, kk) = injected_value(cfg%inject_value)
      end if
      ! non-finite or out of bounds: max |x| (NaN-aware), an exact reduction
      local_fail = 0
      maxabs = 0
      do kk = 1, s%n
        if (.not. (abs(s%x(1, kk)) <= huge(1.0_dp))) then
          local_fail = 2
        else
          maxabs = max(maxabs, abs(s%x(1, kk)))
        end if
      end do
      if (local_fail == 0 .and. maxabs > cfg%max_abs) local_fail = 1
      call MPI_Allreduce(local_fail, fail_flag, 1, MPI_INTEGER, MPI_MAX, s%comm, ierr)
      if (fail_flag == 2) then
        call fail_at(step, 'nonfinite', 'x', 'x is not finite')
        call record(step)
        exit
      else if (fail_flag == 1) then
        call MPI_Allreduce(MPI_IN_PLACE, maxabs, 1, MPI_DOUBLE_PRECISION, MPI_MAX, s%comm, ierr)
        call fail_at(step, 'bounds', 'x', '|x| = '//ftoa(maxabs)//' > max_abs = '// &
                     ftoa(cfg%max_abs))
        call record(step)
        exit
      end if
      if (cfg%drift_check .and. mod(step, cfg%drift_sample_interval) == 0) then
        call gather_columns_dp(s%x(:, 1:s%n), s%xg, s%counts, s%displs, s%comm)
        fail_flag = 0
        if (s%rank == 0) then
          wsum = wsum + sum(s%xg(1, :))
          wsq = wsq + sum(s%xg(1, :)**2)
          wcount = wcount + cfg%k
          if (mod(step, cfg%drift_window) == 0) then
            wmean = wsum / wcount
            wstd = sqrt(max(wsq / wcount - wmean**2, 0.0_dp))
            zm = (wmean - cfg%clim_mean) / cfg%sd_window_mean
            zs = (wstd - cfg%clim_std) / cfg%sd_window_std
            i_win = i_win + 1
            w_time(i_win) = step * cfg%dt
            w_zmean(i_win) = zm
            w_zstd(i_win) = zs
            wsum = 0; wsq = 0; wcount = 0
            if (abs(zm) > cfg%drift_sigma) then
              fail_flag = 1
              variable = 'x_mean'
              errmsg = 'window mean of x '//ftoa(wmean)//' is '//ftoa(zm)//' sd from the '// &
                       'truth climatology (threshold '//ftoa(cfg%drift_sigma)//')'
            else if (abs(zs) > cfg%drift_sigma) then
              fail_flag = 1
              variable = 'x_std'
              errmsg = 'window std of x '//ftoa(wstd)//' is '//ftoa(zs)//' sd from the '// &
                       'truth climatology (threshold '//ftoa(cfg%drift_sigma)//')'
            end if
          end if
        end if
        call bcast_int(fail_flag, s%comm)
        if (fail_flag /= 0) then
          call bcast_str(variable, s%comm)
          call bcast_str(errmsg, s%comm)
          call fail_at(step, 'drift', variable, errmsg)
          call record(step)
          exit
        end if
      end if
      if (mod(step, cfg%output_interval) == 0) call record(step)
    end do
    if (r%status == 'completed') r%steps = cfg%n_steps
    stat = 0
    call r%clear_extras()
    call r%add_extra('final_window_z_mean', last(w_zmean(1:i_win)))
    call r%add_extra('final_window_z_std', last(w_zstd(1:i_win)))
    call r%add_extra('mean_x', mean_finite(d_mean(1:i_out)))
    call r%add_extra('std_x', mean_finite(d_std(1:i_out)))
    if (s%rank == 0) call write_diagnostics(stat, errmsg)
    call bcast_int(stat, s%comm)
    if (stat /= 0) call bcast_str(errmsg, s%comm)
  contains
    subroutine fail_at(step_, reason_, variable_, msg)
      integer, intent(in) :: step_
      character(len=*), intent(in) :: reason_, variable_, msg
      r%status = 'failed'
      r%steps = step_
      r%failure_step = step_
      r%reason = reason_
      r%variable = variable_
      r%message = msg
    end subroutine fail_at

    !> One diagnostics record at `step` (collective: gathers the state on rank 0).
    subroutine record(step_)
      integer, intent(in) :: step_
      real(dp) :: m
      real(dp) :: t0
      t0 = wall_clock()
      if (i_out >= n_out) return
      i_out = i_out + 1
      call gather_columns_dp(s%x(:, 1:s%n), s%xg, s%counts, s%displs, s%comm)
      call gather_columns_dp(s%u1, s%ug, s%counts, s%displs, s%comm)
      if (s%rank == 0) then
        m = sum(s%xg(1, :)) / cfg%k
        d_time(i_out) = step_ * cfg%dt
        d_mean(i_out) = m
        d_std(i_out) = sqrt(max(sum((s%xg(1, :) - m)**2) / cfg%k, 0.0_dp))
        d_bias(i_out) = m - cfg%clim_mean
        d_rmse(i_out) = sqrt(sum((s%xg(1, :) - cfg%clim_mean)**2) / cfg%k)
        d_energy(i_out) = 0.5_dp * sum(s%xg(1, :)**2) / cfg%k
        d_maxabs(i_out) = maxval(abs(s%xg(1, :)))
        d_umean(i_out) = sum(s%ug(1, :)) / cfg%k
      end if
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine record


    subroutine write_diagnostics(st, msg)
      integer, intent(out) :: st
      character(len=*), intent(out) :: msg
      type(h5_out_t) :: out
      real(dp) :: t0
      integer :: i
      t0 = wall_clock()
      call out%create(trim(cfg%output_dir)//'/diagnostics.h5')
      call out%dim('time', d_time(1:i_out))
      call out%put1('x_mean', d_mean(1:i_out), 'time')
      call out%put1('x_std', d_std(1:i_out), 'time')
      call out%put1('bias', d_bias(1:i_out), 'time')
      call out%put1('rmse', d_rmse(1:i_out), 'time')
      call out%put1('energy', d_energy(1:i_out), 'time')
      call out%put1('max_abs_x', d_maxabs(1:i_out), 'time')
      call out%put1('u_mean', d_umean(1:i_out), 'time')
      call out%dim('window_end', w_time(1:i_win))
      call out%put1('drift_z_mean', w_zmean(1:i_win), 'window_end')
      call out%put1('drift_z_std', w_zstd(1:i_win), 'window_end')
      call out%dim('k', [(real(i, dp), i = 1, cfg%k)])
      call out%put1('x_final', s%xg(1, :), 'k')
      call out%attr_str('host', 'l96')
      call out%attr_str('closure', trim(cfg%closure))
      call out%attr_str('status', trim(r%status))
      call out%attr_real('dt', cfg%dt)
      call out%attr_real('clim_mean', cfg%clim_mean)
      call out%attr_real('clim_std', cfg%clim_std)
      call out%attr_real('failure_step', real(r%failure_step, dp))
      call out%commit(st, msg)
      if (st == 0) r%diagnostics = 'diagnostics.h5'
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine write_diagnostics
  end subroutine run_coarse

  ! ---------------------------------------------------------------------------------------
  ! truth mode: both scales, snapshots of (x, U) for training and climatology

  subroutine run_truth(cfg, s, r, stat, errmsg)
    type(l96_config_t), intent(in) :: cfg
    type(l96_state_t), intent(inout) :: s
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: step, n_samp, i_samp, nf, bad, i
    real(dp), allocatable :: xsnap(:, :), usnap(:, :), tsnap(:)
    real(dp), allocatable :: ky1(:), ky2(:), ky3(:), ky4(:), ys(:, :), dy(:)
    n_samp = cfg%n_steps / cfg%sample_interval
    nf = cfg%j * s%n
    allocate (ky1(nf), ky2(nf), ky3(nf), ky4(nf), dy(nf), ys(1, 0:nf + 2))
    if (s%rank == 0) then
      allocate (xsnap(cfg%k, n_samp), usnap(cfg%k, n_samp), tsnap(n_samp))
    else
      allocate (xsnap(1, 1), usnap(1, 1), tsnap(1))
    end if
    i_samp = 0
    r%status = 'completed'
    do step = 1, cfg%spinup_steps + cfg%n_steps
      call truth_step()
      bad = 0
      if (.not. all(abs(s%x(1, 1:s%n)) <= cfg%max_abs)) bad = 1
      if (any_rank(bad /= 0, s%comm)) then
        r%status = 'failed'
        r%reason = 'bounds'
        r%variable = 'x'
        r%failure_step = step
        r%message = 'the truth run left |x| <= max_abs (is dt too large?)'
        exit
      end if
      if (step > cfg%spinup_steps .and. mod(step - cfg%spinup_steps, cfg%sample_interval) == 0) then
        i_samp = i_samp + 1
        call coupling(s%y, s%u)
        call gather_columns_dp(s%x(:, 1:s%n), s%xg, s%counts, s%displs, s%comm)
        s%u1(1, :) = s%u
        call gather_columns_dp(s%u1, s%ug, s%counts, s%displs, s%comm)
        if (s%rank == 0) then
          xsnap(:, i_samp) = s%xg(1, :)
          usnap(:, i_samp) = s%ug(1, :)
          tsnap(i_samp) = (step - cfg%spinup_steps) * cfg%dt
        end if
      end if
    end do
    r%steps = min(step, cfg%spinup_steps + cfg%n_steps)
    r%max_steps = cfg%spinup_steps + cfg%n_steps
    stat = 0
    if (s%rank == 0) call write_truth(stat, errmsg)
    call bcast_int(stat, s%comm)
    if (stat /= 0) call bcast_str(errmsg, s%comm)
  contains
    subroutine coupling(y, u)
      real(dp), intent(in) :: y(:, 0:)
      real(dp), intent(out) :: u(:)
      integer :: k
      do k = 1, s%n
        u(k) = -(cfg%h * cfg%c / cfg%b) * sum(y(1, (k - 1) * cfg%j + 1:k * cfg%j))
      end do
    end subroutine coupling

    subroutine fast_tendency(x, y, dyy)
      real(dp), intent(in) :: x(:, 1 - s%hl:), y(:, 0:)
      real(dp), intent(out) :: dyy(:)
      integer :: i
      do i = 1, nf
        dyy(i) = -cfg%c * cfg%b * y(1, i + 1) * (y(1, i + 2) - y(1, i - 1)) - cfg%c * y(1, i) + &
                 (cfg%h * cfg%c / cfg%b) * x(1, (i - 1) / cfg%j + 1)
      end do
    end subroutine fast_tendency

    subroutine stage(x, y, kx, ky)
      real(dp), intent(inout) :: x(:, 1 - s%hl:), y(:, 0:)
      real(dp), intent(out) :: kx(:), ky(:)
      call ring_exchange(x, s%n, s%hl, s%hr, s%comm)
      call ring_exchange(y, nf, 1, 2, s%comm)
      call coupling(y, s%u)
      call slow_tendency(s%n, cfg%f, x(1, -1:), s%u, kx)
      call fast_tendency(x, y, ky)
    end subroutine stage

    subroutine truth_step()
      real(dp) :: dt
      dt = cfg%dt
      call stage(s%x, s%y, s%k1, ky1)
      s%xs(1, 1:s%n) = s%x(1, 1:s%n) + 0.5_dp * dt * s%k1
      ys(1, 1:nf) = s%y(1, 1:nf) + 0.5_dp * dt * ky1
      call stage(s%xs, ys, s%k2, ky2)
      s%xs(1, 1:s%n) = s%x(1, 1:s%n) + 0.5_dp * dt * s%k2
      ys(1, 1:nf) = s%y(1, 1:nf) + 0.5_dp * dt * ky2
      call stage(s%xs, ys, s%k3, ky3)
      s%xs(1, 1:s%n) = s%x(1, 1:s%n) + dt * s%k3
      ys(1, 1:nf) = s%y(1, 1:nf) + dt * ky3
      call stage(s%xs, ys, s%k4, ky4)
      s%x(1, 1:s%n) = s%x(1, 1:s%n) + dt / 6 * (s%k1 + 2 * s%k2 + 2 * s%k3 + s%k4)
      s%y(1, 1:nf) = s%y(1, 1:nf) + dt / 6 * (ky1 + 2 * ky2 + 2 * ky3 + ky4)
    end subroutine truth_step

    subroutine write_truth(st, msg)
      integer, intent(out) :: st
      character(len=*), intent(out) :: msg
      type(h5_out_t) :: out
      real(dp) :: t0
      t0 = wall_clock()
      call out%create(trim(cfg%output_dir)//'/truth.h5')
      call out%dim('time', tsnap(1:i_samp))
      call out%dim('k', [(real(i, dp), i = 1, cfg%k)])
      call out%put2('x', xsnap(:, 1:i_samp), [character(len=8) :: 'k', 'time'])
      call out%put2('u', usnap(:, 1:i_samp), [character(len=8) :: 'k', 'time'])
      call out%attr_str('host', 'l96')
      call out%attr_real('k', real(cfg%k, dp))
      call out%attr_real('j', real(cfg%j, dp))
      call out%attr_real('f', cfg%f)
      call out%attr_real('h', cfg%h)
      call out%attr_real('b', cfg%b)
      call out%attr_real('c', cfg%c)
      call out%attr_real('dt', cfg%dt)
      call out%attr_real('sample_interval', real(cfg%sample_interval, dp))
      call out%attr_real('seed', real(cfg%seed, dp))
      call out%commit(st, msg)
      if (st == 0) r%diagnostics = 'truth.h5'
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine write_truth
  end subroutine run_truth

  ! ---------------------------------------------------------------------------------------

  real(dp) function ieee_nan()
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
    ieee_nan = ieee_value(1.0_dp, ieee_quiet_nan)
  end function ieee_nan

  real(dp) function last(a)
    real(dp), intent(in) :: a(:)
    if (size(a) == 0) then
      last = ieee_nan()
    else
      last = a(size(a))
    end if
  end function last

  real(dp) function mean_finite(a)
    real(dp), intent(in) :: a(:)
    logical :: ok(size(a))
    ok = abs(a) <= huge(1.0_dp)
    if (count(ok) == 0) then
      mean_finite = ieee_nan()
    else
      mean_finite = sum(a, mask=ok) / count(ok)
    end if
  end function mean_finite

  !> The coupler's own account of the network calls, into result.json's extras: calls and
  !> columns summed over the ranks, seconds of the slowest rank.
  subroutine record_coupler_timers(r, comm)
    type(run_result_t), intent(inout) :: r
    type(MPI_Comm), intent(in) :: comm
    integer(i8) :: counts(2), total(2)
    real(dp) :: seconds, slowest
    integer :: ierr
    call colnn_coupler_timers(counts(1), counts(2), seconds)
    call MPI_Allreduce(counts, total, 2, MPI_INTEGER8, MPI_SUM, comm, ierr)
    call MPI_Allreduce(seconds, slowest, 1, MPI_DOUBLE_PRECISION, MPI_MAX, comm, ierr)
    call r%add_extra('coupler_calls', real(total(1), dp))
    call r%add_extra('coupler_columns', real(total(2), dp))
    call r%add_extra('coupler_seconds', slowest)
  end subroutine record_coupler_timers
end module l96_host
