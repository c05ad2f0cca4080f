!> The 2-D shallow-water host program: a truth mode that writes training data (state and the
!> "unresolved" forcing theta) and a coarse mode whose forcing comes from a closure (the NN
!> through colnn_coupler, none, or the truth forcing) with steps-to-failure checks.
!>
!> Physics (README.md): one reduced-gravity layer on a doubly periodic Arakawa C-grid, f-plane,
!> vector-invariant momentum with the Sadourny (1975) energy-conserving vorticity flux, flux-form
!> continuity, SSP-RK3. The forcing theta = (theta_u, theta_v, theta_h) is added to the three
!> tendencies: in truth, wind stress - linear drag + Laplacian viscosity, and thickness
!> relaxation towards a zero-mean h_eq.
!>
!> Grid and indexing: cell (i, j), i = 1..nx (x), j = 1..ny (y); h(i, j) at the cell centre,
!> u(i, j) on its west face, v(i, j) on its south face, the vorticity at its south-west corner.
!> The y direction is split in strips of rows over the MPI ranks (halo rows of 1); x is periodic
!> within a rank. Every global sum is taken on rank 0 over the gathered fields in one order, so
!> results do not depend on the number of ranks.
!>
!> Configuration: one namelist file with &sw_model, &sw_run, &sw_failure and (for closure = 'nn')
!> the coupler's &colnn_coupler. Output in output_dir: result.json (atomic), diagnostics.h5
!> (coarse) or truth.h5 (truth), each written to a temporary name and renamed.
module sw_host
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

  public :: sw_host_main, sw_write_defaults, sw_print_config

  real(dp), parameter :: DAY = 86400, PI = 3.14159265358979323846_dp
  integer, parameter :: N_IN = 15, N_OUT = 3      !< NN features per column (README: the order)

  ! the global diagnostics of one state, in this order (computed on rank 0)
  integer, parameter :: D_MASS = 1, D_MEAN_H = 2, D_H_STD = 3, D_KE = 4, D_PE = 5, &
                        D_ENERGY = 6, D_MAX_SPEED = 7, D_MEAN_SPEED = 8, D_THETA_H_MEAN = 9, &
                        ND = 9
  character(len=*), parameter :: DIAG_NAMES(ND) = [character(len=16) :: 'mass', 'mean_h', &
    'h_std', 'ke', 'pe', 'energy', 'max_speed', 'mean_speed', 'theta_h_mean']

  ! per-step failure codes; the lowest over the ranks is the one reported
  integer, parameter :: C_NAN_U = 1, C_NAN_V = 2, C_NAN_H = 3, C_DEPTH = 4, C_SPEED_U = 5, &
                        C_SPEED_V = 6, C_OK = 99

  type :: sw_config_t
    ! &sw_model
    integer :: nx = 32, ny = 32
    real(dp) :: dx = 50e3_dp, dy = 50e3_dp          !< m
    real(dp) :: f0 = 1e-4_dp                        !< 1/s
    real(dp) :: g = 0.5_dp                          !< reduced gravity, m/s^2
    real(dp) :: depth = 500                         !< mean depth H, m
    real(dp) :: viscosity = 100                     !< m^2/s
    real(dp) :: drag_days = 30                      !< linear drag r = 1/drag_days; 0: none
    real(dp) :: wind_u0 = 4, wind_days = 30         !< wind F0 = wind_u0 / wind_days (m/s^2)
    real(dp) :: relax_days = 30                     !< thickness relaxation time scale
    real(dp) :: h_eq_amplitude = 10                 !< m
    ! &sw_run
    character(len=16) :: mode = 'coarse'            !< 'truth' | 'coarse'
    character(len=16) :: closure = 'nn'             !< coarse: 'nn' | 'none' | 'truth'
    real(dp) :: dt = 900                            !< s
    integer :: n_steps = 1000, spinup_steps = 0
    integer(i8) :: seed = 1
    character(len=1024) :: init_file = '', output_dir = '.'
    integer :: init_index = 1
    integer :: output_interval = 24, sample_interval = 48
    integer :: inject_nan_step = -1, inject_nan_column = 1
    character(len=8) :: inject_value = 'nan'        !< what is injected: nan, inf or -inf
    real(dp) :: wind_scale = 1
    logical :: relaxation = .true.
    ! &sw_failure
    real(dp) :: max_speed = 50                      !< m/s, on |u| and |v|
    real(dp) :: energy_max = 0, energy_warn = 0     !< m^3/s^2 (domain mean); 0: off
    integer :: energy_check_interval = 24
    real(dp) :: clim_ke = 0, clim_pe = 0, clim_h_std = 0, clim_speed_mean = 0  !< 0: not given
  end type sw_config_t

  !> Per-rank state of a run. Fields are (nx, 0:n+1): this rank's rows 1..n and one halo row
  !> on each side (every stencil here reaches one row).
  type :: sw_state_t
    type(MPI_Comm) :: comm
    integer :: rank = 0, nranks = 1, first = 1, n = 0   !< this rank owns rows first..first+n-1
    integer :: ncol = 0                                 !< NN columns = nx * n
    real(dp), allocatable :: u(:, :), v(:, :), h(:, :)  !< the state
    real(dp), allocatable :: us(:, :), vs(:, :), hs(:, :)  !< the RK stage state
    real(dp), allocatable :: dd(:, :), uf(:, :), vf(:, :), q(:, :), bern(:, :)  !< work
    real(dp), allocatable :: du(:, :), dv(:, :), dh(:, :)  !< tendencies, (nx, n)
    real(dp), allocatable :: fu(:, :), fv(:, :), fh(:, :)  !< theta at the current stage
    real(dp), allocatable :: fh1(:, :)                  !< theta_h at the step's first stage
    real(dp), allocatable :: wind_u(:, :), wind_v(:, :), h_eq(:, :)  !< static patterns
    integer, allocatable :: ip(:), im(:)                !< periodic x neighbours
    real(wp), allocatable :: nn_in(:, :), nn_out(:, :)
    integer, allocatable :: counts(:), displs(:)
    real(dp), allocatable :: ug(:, :), vg(:, :), hg(:, :), wg(:, :)  !< gathered on rank 0
    real(dp) :: t_nn = 0, t_start = 0, t_io = 0
  end type sw_state_t

  character(len=*), parameter :: GROUPS(4) = [character(len=16) :: 'sw_model', 'sw_run', &
                                               'sw_failure', 'colnn_coupler']

contains

  !> Runs the host on the namelist file `path`; exit_code 0: completed or failed (the outcome
  !> is in result.json), 1: error (the run could not start or could not go on).
  subroutine sw_host_main(path, exit_code)
    character(len=*), intent(in) :: path
    integer, intent(out) :: exit_code
    type(sw_config_t) :: cfg
    type(sw_state_t) :: s
    type(run_result_t) :: r
    character(len=1024) :: errmsg
    character(len=256) :: msg2
    integer :: stat, ierr

    s%comm = MPI_COMM_WORLD
    call MPI_Comm_rank(s%comm, s%rank, ierr)
    call MPI_Comm_size(s%comm, s%nranks, ierr)
    s%t_start = wall_clock()
    r%host = 'sw'
    r%n_ranks = s%nranks
    r%config_hash = hash_file(path)

    call read_config(path, cfg, stat, errmsg)
    r%mode = cfg%mode
    if (cfg%mode == 'coarse') r%closure = cfg%closure
    r%seed = cfg%seed
    r%max_steps = cfg%n_steps
    r%n_columns = cfg%nx * cfg%ny
    if (stat == 0) call setup(cfg, s, stat, errmsg)
    if (stat == 0 .and. cfg%mode == 'coarse' .and. cfg%closure == 'nn') then
      call coupler_setup(path, r, stat, errmsg)
    end if
    if (share_error(stat /= 0, errmsg, s%comm)) then
      r%wall_s = wall_clock() - s%t_start
      call finish_run('colnn_sw', cfg%output_dir, s%rank, r, exit_code, errmsg)
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
      call finish_run('colnn_sw', cfg%output_dir, s%rank, r, exit_code, errmsg)
      return
    end if
    r%wall_s = wall_clock() - s%t_start
    r%io_s = s%t_io
    r%nn_s = s%t_nn
    r%dynamics_s = r%wall_s - r%nn_s - r%io_s
    call finish_run('colnn_sw', cfg%output_dir, s%rank, r, exit_code)
  end subroutine sw_host_main

  ! ---------------------------------------------------------------------------------------
  ! configuration

  !> `colnn_sw --print-config CONFIG.nml`: reads CONFIG.nml as a run does and writes every
  !> group with the values the run would use (what was read, defaults for the rest); starts
  !> nothing. `stat` /= 0 with `errmsg` when the file cannot be read or a value is invalid.
  subroutine sw_print_config(path, unit, stat, errmsg)
    character(len=*), intent(in) :: path   !! the namelist file
    integer, intent(in) :: unit            !! where the groups are written
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(sw_config_t) :: cfg
    call read_config(path, cfg, stat, errmsg, unit)
  end subroutine sw_print_config

  !> The namelist groups with their defaults (`colnn_sw --defaults`): the harness checks its
  !> configuration keys against this list.
  subroutine sw_write_defaults(unit)
    integer, intent(in) :: unit
    type(sw_config_t) :: cfg
    integer :: stat
    character(len=256) :: errmsg
    call read_config('', cfg, stat, errmsg, unit)
  end subroutine sw_write_defaults

  subroutine read_config(path, cfg, stat, errmsg, defaults_unit)
    character(len=*), intent(in) :: path
    type(sw_config_t), intent(inout) :: cfg
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer, intent(in), optional :: defaults_unit
    integer :: nx, ny, n_steps, spinup_steps, init_index, output_interval, sample_interval, &
               inject_nan_step, inject_nan_column, energy_check_interval
    real(dp) :: dx, dy, f0, g, depth, viscosity, drag_days, wind_u0, wind_days, relax_days, &
                h_eq_amplitude, dt, wind_scale, max_speed, energy_max, energy_warn, clim_ke, &
                clim_pe, clim_h_std, clim_speed_mean
    character(len=16) :: mode, closure
    character(len=8) :: inject_value
    character(len=1024) :: init_file, output_dir
    integer(i8) :: seed
    logical :: relaxation, found(size(GROUPS))
    integer :: gstat
    character(len=1024) :: gmsg
    namelist /sw_model/ nx, ny, dx, dy, f0, g, depth, viscosity, drag_days, wind_u0, &
      wind_days, relax_days, h_eq_amplitude
    namelist /sw_run/ mode, closure, dt, n_steps, spinup_steps, seed, init_file, init_index, &
      output_dir, output_interval, sample_interval, inject_nan_step, inject_nan_column, &
      inject_value, wind_scale, relaxation
    namelist /sw_failure/ max_speed, energy_max, energy_warn, energy_check_interval, clim_ke, &
      clim_pe, clim_h_std, clim_speed_mean

    gstat = 0
    gmsg = ''
    found = .false.
    if (len(path) > 0) call check_groups(path, GROUPS, gstat, gmsg, found)
    ! each group is read into locals preset to the defaults, then copied back by name (a
    ! positional constructor would silently swap two reals of the same kind); &sw_run first,
    ! so that any other error (an unknown group included) is reported in its output_dir
    mode = cfg%mode; closure = cfg%closure; dt = cfg%dt; n_steps = cfg%n_steps
    spinup_steps = cfg%spinup_steps; seed = cfg%seed; init_file = cfg%init_file
    init_index = cfg%init_index; output_dir = cfg%output_dir
    output_interval = cfg%output_interval; sample_interval = cfg%sample_interval
    inject_nan_step = cfg%inject_nan_step; inject_nan_column = cfg%inject_nan_column
    inject_value = cfg%inject_value
    wind_scale = cfg%wind_scale; relaxation = cfg%relaxation
    call read_group('sw_run')
    ! best effort: an error later in &sw_run keeps an output_dir read before it, so that the
    ! error's result.json lands where the caller looks
    if (stat /= 0 .and. len_trim(output_dir) > 0) cfg%output_dir = output_dir
    if (stat /= 0) return
    cfg%mode = mode; cfg%closure = closure; cfg%dt = dt; cfg%n_steps = n_steps
    cfg%spinup_steps = spinup_steps; cfg%seed = seed; cfg%init_file = init_file
    cfg%init_index = init_index; cfg%output_dir = output_dir
    cfg%output_interval = output_interval; cfg%sample_interval = sample_interval
    cfg%inject_nan_step = inject_nan_step; cfg%inject_nan_column = inject_nan_column
    cfg%inject_value = inject_value
    cfg%wind_scale = wind_scale; cfg%relaxation = relaxation
    if (gstat /= 0) then
      stat = gstat
      errmsg = gmsg
      return
    end if

    nx = cfg%nx; ny = cfg%ny; dx = cfg%dx; dy = cfg%dy; f0 = cfg%f0; g = cfg%g
    depth = cfg%depth; viscosity = cfg%viscosity; drag_days = cfg%drag_days
    wind_u0 = cfg%wind_u0; wind_days = cfg%wind_days; relax_days = cfg%relax_days
    h_eq_amplitude = cfg%h_eq_amplitude
    call read_group('sw_model')
    if (stat /= 0) return
    cfg%nx = nx; cfg%ny = ny; cfg%dx = dx; cfg%dy = dy; cfg%f0 = f0; cfg%g = g
    cfg%depth = depth; cfg%viscosity = viscosity; cfg%drag_days = drag_days
    cfg%wind_u0 = wind_u0; cfg%wind_days = wind_days; cfg%relax_days = relax_days
    cfg%h_eq_amplitude = h_eq_amplitude

    max_speed = cfg%max_speed; energy_max = cfg%energy_max; energy_warn = cfg%energy_warn
    energy_check_interval = cfg%energy_check_interval; clim_ke = cfg%clim_ke
    clim_pe = cfg%clim_pe; clim_h_std = cfg%clim_h_std; clim_speed_mean = cfg%clim_speed_mean
    call read_group('sw_failure')
    if (stat /= 0) return
    cfg%max_speed = max_speed; cfg%energy_max = energy_max; cfg%energy_warn = energy_warn
    cfg%energy_check_interval = energy_check_interval; cfg%clim_ke = clim_ke
    cfg%clim_pe = clim_pe; cfg%clim_h_std = clim_h_std; cfg%clim_speed_mean = clim_speed_mean

    if (.not. present(defaults_unit)) call validate(cfg, path, stat, errmsg)
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
      case ('sw_model')
        read (u, nml=sw_model, iostat=stat, iomsg=iomsg)
      case ('sw_run')
        read (u, nml=sw_run, iostat=stat, iomsg=iomsg)
      case ('sw_failure')
        read (u, nml=sw_failure, iostat=stat, iomsg=iomsg)
      end select
      close (u)
      if (stat < 0 .and. .not. any(found .and. GROUPS == group)) then
        stat = 0    ! the group is not in the file: its defaults
      else if (stat < 0) then
        ! gfortran also ends here, keeping the defaults, when the group's last value cannot be
        ! read as its type (n_steps = 1.5 before '/')
        errmsg = trim(path)//': namelist &'//group//' does not end (a missing /, the last '// &
                 'line without a newline, or a last value of the wrong type)'
      else if (stat > 0) then
        errmsg = trim(path)//': namelist &'//group//': '//trim(iomsg)
      end if
      if (stat == 0 .and. present(defaults_unit)) call write_group(group)
    end subroutine read_group

    !> The group's values as the host holds them: its defaults, or what was read.
    subroutine write_group(group)
      character(len=*), intent(in) :: group
      select case (group)
      case ('sw_model')
        write (defaults_unit, nml=sw_model)
      case ('sw_run')
        write (defaults_unit, nml=sw_run)
      case ('sw_failure')
        write (defaults_unit, nml=sw_failure)
      end select
    end subroutine write_group
  end subroutine read_config

  subroutine validate(cfg, path, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(dp) :: courant
    stat = 1
    courant = 0
    if (cfg%dx > 0 .and. cfg%dy > 0 .and. cfg%g > 0 .and. cfg%depth > 0) &
      courant = 2 * cfg%dt * sqrt(cfg%g * cfg%depth) * sqrt(1 / cfg%dx**2 + 1 / cfg%dy**2)
    if (cfg%nx < 3) then
      errmsg = bad('sw_model', 'nx', 'must be >= 3, got '//itoa(cfg%nx))
    else if (cfg%ny < 3) then
      errmsg = bad('sw_model', 'ny', 'must be >= 3, got '//itoa(cfg%ny))
    else if (.not. (cfg%dx > 0 .and. cfg%dy > 0 .and. finite(cfg%dx) .and. finite(cfg%dy))) then
      errmsg = bad('sw_model', 'dx, dy', 'must be > 0 and finite')
    else if (.not. (cfg%g > 0 .and. finite(cfg%g))) then
      errmsg = bad('sw_model', 'g', 'must be > 0 and finite')
    else if (.not. (cfg%depth > 0 .and. finite(cfg%depth))) then
      errmsg = bad('sw_model', 'depth', 'must be > 0 and finite')
    else if (.not. finite(cfg%f0)) then
      errmsg = bad('sw_model', 'f0', 'must be finite')
    else if (.not. (cfg%viscosity >= 0 .and. finite(cfg%viscosity))) then
      errmsg = bad('sw_model', 'viscosity', 'must be >= 0 and finite')
    else if (.not. (cfg%drag_days >= 0 .and. finite(cfg%drag_days))) then
      errmsg = bad('sw_model', 'drag_days', 'must be >= 0 (0: no drag)')
    else if (.not. (cfg%wind_days > 0 .and. finite(cfg%wind_days) .and. finite(cfg%wind_u0))) then
      errmsg = bad('sw_model', 'wind_days, wind_u0', 'wind_days must be > 0, wind_u0 finite')
    else if (.not. (cfg%relax_days > 0 .and. finite(cfg%relax_days))) then
      errmsg = bad('sw_model', 'relax_days', 'must be > 0 (switch relaxation off in &sw_run)')
    else if (.not. finite(cfg%h_eq_amplitude)) then
      errmsg = bad('sw_model', 'h_eq_amplitude', 'must be finite')
    else if (all(cfg%mode /= [character(len=16) :: 'truth', 'coarse'])) then
      errmsg = bad('sw_run', 'mode', "must be 'truth' or 'coarse', got '"//trim(cfg%mode)//"'")
    else if (all(cfg%closure /= [character(len=16) :: 'nn', 'none', 'truth'])) then
      errmsg = bad('sw_run', 'closure', "must be 'nn', 'none' or 'truth', got '"// &
                   trim(cfg%closure)//"'")
    else if (.not. (cfg%dt > 0 .and. courant <= sqrt(3.0_dp))) then
      ! gravity waves on the C-grid: SSP-RK3 is stable on the imaginary axis up to sqrt(3)
      errmsg = bad('sw_run', 'dt', 'must be > 0 with 2 dt sqrt(g depth) sqrt(1/dx^2 + 1/dy^2) '// &
                   '<= sqrt(3) (gravity-wave limit), got '//ftoa(courant))
    else if (cfg%n_steps < 1) then
      errmsg = bad('sw_run', 'n_steps', 'must be >= 1, got '//itoa(cfg%n_steps))
    else if (cfg%spinup_steps < 0) then
      errmsg = bad('sw_run', 'spinup_steps', 'must be >= 0')
    else if (cfg%output_interval < 1 .or. cfg%sample_interval < 1) then
      errmsg = bad('sw_run', 'output_interval, sample_interval', 'must be >= 1')
    else if (cfg%init_index < 1) then
      errmsg = bad('sw_run', 'init_index', 'must be >= 1 (Fortran order)')
    else if (len_trim(cfg%output_dir) == 0) then
      errmsg = bad('sw_run', 'output_dir', 'must not be empty')
    else if (cfg%inject_nan_step /= -1 .and. (cfg%inject_nan_column < 1 .or. &
                                              cfg%inject_nan_column > cfg%nx * cfg%ny)) then
      errmsg = bad('sw_run', 'inject_nan_column', 'must be in 1 .. nx*ny')
    else if (.not. is_injectable(cfg%inject_value)) then
      errmsg = bad('sw_run', 'inject_value', "must be 'nan', 'inf' or '-inf'")
    else if (.not. finite(cfg%wind_scale)) then
      errmsg = bad('sw_run', 'wind_scale', 'must be finite')
    else if (.not. (cfg%max_speed > 0)) then
      errmsg = bad('sw_failure', 'max_speed', 'must be > 0')
    else if (.not. (cfg%energy_max >= 0 .and. cfg%energy_warn >= 0)) then
      errmsg = bad('sw_failure', 'energy_max, energy_warn', 'must be >= 0 (0: off)')
    else if (cfg%energy_check_interval < 1) then
      errmsg = bad('sw_failure', 'energy_check_interval', 'must be >= 1')
    else if (.not. (cfg%clim_ke >= 0 .and. cfg%clim_pe >= 0 .and. cfg%clim_h_std >= 0 .and. &
                    cfg%clim_speed_mean >= 0)) then
      errmsg = bad('sw_failure', 'clim_ke, clim_pe, clim_h_std, clim_speed_mean', &
                   'must be >= 0 (0: not given)')
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

  ! ---------------------------------------------------------------------------------------
  ! setup: decomposition, every array of the run (nothing is allocated after this), the static
  ! forcing patterns and the initial state

  subroutine setup(cfg, s, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: i, j, jg, nx, n, mg, ng
    integer(i8) :: c
    real(dp) :: lx, ly, xc, yc, f_wind
    real(dp), allocatable :: init(:)

    ! decided from global numbers, so that every rank takes the same path (a rank that left
    ! here alone would hang the others in the collective gather_layout below)
    if (s%nranks > cfg%ny) then
      stat = 1
      errmsg = 'ny = '//itoa(cfg%ny)//' rows over '//itoa(s%nranks)//' ranks leaves a rank '// &
               'no rows: use at most ny ranks'
      return
    end if
    call decompose_columns(cfg%ny, s%comm, s%first, s%n, stat, errmsg)
    if (stat /= 0) return
    nx = cfg%nx
    n = s%n
    allocate (s%u(nx, 0:n + 1), s%v(nx, 0:n + 1), s%h(nx, 0:n + 1), s%us(nx, 0:n + 1), &
              s%vs(nx, 0:n + 1), s%hs(nx, 0:n + 1), s%dd(nx, 0:n + 1), s%uf(nx, 0:n + 1), &
              s%vf(nx, 0:n + 1), s%q(nx, 0:n + 1), s%bern(nx, 0:n + 1), source=0.0_dp)
    allocate (s%du(nx, n), s%dv(nx, n), s%dh(nx, n), s%fu(nx, n), s%fv(nx, n), s%fh(nx, n), &
              s%fh1(nx, n), s%wind_u(nx, n), s%wind_v(nx, n), s%h_eq(nx, n), source=0.0_dp)
    allocate (s%ip(nx), s%im(nx))
    do i = 1, nx
      s%ip(i) = modulo(i, nx) + 1
      s%im(i) = modulo(i - 2, nx) + 1
    end do
    s%ncol = nx * n
    allocate (s%nn_in(N_IN, s%ncol), s%nn_out(N_OUT, s%ncol), source=0.0_wp)
    call gather_layout(nx, n, s%comm, s%counts, s%displs)
    mg = merge(nx, 1, s%rank == 0)
    ng = merge(cfg%ny, 1, s%rank == 0)
    allocate (s%ug(mg, ng), s%vg(mg, ng), s%hg(mg, ng), s%wg(mg, ng), source=0.0_dp)

    ! static forcing patterns, from global positions: wind stress at the u and v points, the
    ! relaxation target at the h points (a whole period in x and y: zero domain mean)
    lx = nx * cfg%dx
    ly = cfg%ny * cfg%dy
    f_wind = cfg%wind_u0 / (cfg%wind_days * DAY)
    do j = 1, n
      jg = s%first + j - 1
      yc = (jg - 0.5_dp) * cfg%dy
      do i = 1, nx
        xc = (i - 0.5_dp) * cfg%dx
        s%wind_u(i, j) = f_wind * cos(4 * PI * yc / ly)
        s%wind_v(i, j) = 0.3_dp * f_wind * sin(2 * PI * xc / lx)
        s%h_eq(i, j) = cfg%h_eq_amplitude * sin(2 * PI * xc / lx) * sin(2 * PI * yc / ly)
      end do
    end do

    ! initial state: snapshot init_index of a truth file, or keyed random small perturbations
    ! (keyed by the global column index, so every decomposition starts from the same state)
    if (len_trim(cfg%init_file) > 0) then
      call load('u', s%u)
      if (stat == 0) call load('v', s%v)
      if (stat == 0) call load('h', s%h)
      if (stat /= 0) return
    else
      do j = 1, n
        jg = s%first + j - 1
        do i = 1, nx
          c = int(i + (jg - 1) * nx, i8)
          s%u(i, j) = 0.01_dp * host_normal(cfg%seed, 1_i8, c)
          s%v(i, j) = 0.01_dp * host_normal(cfg%seed, 2_i8, c)
          s%h(i, j) = host_normal(cfg%seed, 3_i8, c)
        end do
      end do
    end if
    s%fh1 = ieee_nan()
    stat = 0
  contains
    !> a(:, 1:n) = this rank's rows of snapshot init_index of dataset `name` (nx, ny, time).
    subroutine load(name, a)
      character(len=*), intent(in) :: name
      real(dp), intent(inout) :: a(:, 0:)
      integer, allocatable :: shp(:)
      integer(i8) :: off
      integer :: jj
      call h5_dataset_shape(trim(cfg%init_file), name, shp, stat, errmsg)
      if (stat /= 0) return
      if (size(shp) /= 3) then
        stat = 1
      else if (shp(1) /= cfg%nx .or. shp(2) /= cfg%ny) then
        stat = 1
      end if
      if (stat /= 0) then
        errmsg = trim(cfg%init_file)//': dataset '//name//' must be (x, y, time) with nx = '// &
                 itoa(cfg%nx)//', ny = '//itoa(cfg%ny)//' (Fortran order)'
        return
      end if
      if (cfg%init_index > shp(3)) then
        stat = 1
        errmsg = trim(cfg%init_file)//': init_index '//itoa(cfg%init_index)//' > '// &
                 itoa(shp(3))//' snapshots'
        return
      end if
      if (.not. allocated(init)) allocate (init(product(shp)))
      if (size(init) /= product(shp)) then
        deallocate (init)
        allocate (init(product(shp)))
      end if
      call h5_read_doubles(trim(cfg%init_file), name, init, stat, errmsg)
      if (stat /= 0) return
      off = int(cfg%init_index - 1, i8) * cfg%nx * cfg%ny
      do jj = 1, s%n
        a(:, jj) = init(off + int(s%first + jj - 2, i8) * cfg%nx + 1: &
                        off + int(s%first + jj - 1, i8) * cfg%nx)
      end do
      if (.not. all(abs(a(:, 1:s%n)) <= huge(1.0_dp))) then
        stat = 1
        errmsg = trim(cfg%init_file)//': the initial '//name//' has non-finite values'
      end if
    end subroutine load
  end subroutine setup

  subroutine coupler_setup(path, r, stat, errmsg)
    character(len=*), intent(in) :: path
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(colnn_coupler_config_t) :: ccfg
    call colnn_coupler_init(path, N_IN, N_OUT, errmsg, stat)
    if (stat /= 0) then
      errmsg = trim(errmsg)//' (this host passes u, v, h at a cell and its 4 neighbours and '// &
               'expects theta_u, theta_v, theta_h)'
      return
    end if
    ! the model hash: of the model file, or of an ensemble's list file
    call colnn_coupler_get_config(ccfg)
    if (len_trim(ccfg%model_file) > 0) r%model_hash = hash_file(ccfg%model_file)
    if (len_trim(ccfg%ensemble) > 0) r%model_hash = hash_file(ccfg%ensemble)
  end subroutine coupler_setup

  ! ---------------------------------------------------------------------------------------
  ! dynamics on this rank's rows (the fields passed in have valid halo rows)

  !> du, dv, dh (rows 1..n) = the adiabatic shallow-water tendencies of (u, v, h) + theta
  !> (s%fu, s%fv, s%fh). Vector-invariant momentum with the energy-conserving vorticity flux
  !> of Sadourny (1975): q = (f0 + zeta) / D at the corners, D = depth + h,
  !>   du/dt =  avg_y(q avg_x(V)) - d/dx(B),   dv/dt = -avg_x(q avg_y(U)) - d/dy(B),
  !>   dh/dt = -(d/dx(U) + d/dy(V)),   U = avg_x(D) u, V = avg_y(D) v,
  !>   B = (u^2 averaged to the centre + v^2 averaged to the centre) / 2 + g h.
  !> The Coriolis/vorticity term does no work, and the flux-form continuity conserves mass to
  !> round-off on the periodic domain.
  subroutine dynamics(cfg, s, u, v, h)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    real(dp), intent(in) :: u(:, 0:), v(:, 0:), h(:, 0:)
    integer :: i, j, n, nx, w, e
    real(dp) :: rdx, rdy, zeta, dcorner
    n = s%n
    nx = cfg%nx
    rdx = 1 / cfg%dx
    rdy = 1 / cfg%dy
    do j = 0, n + 1
      do i = 1, nx
        s%dd(i, j) = cfg%depth + h(i, j)
      end do
    end do
    ! mass fluxes: U on rows 0..n (v needs the row below), V on rows 1..n+1 (u and h need the
    ! row above)
    do j = 0, n + 1
      do i = 1, nx
        s%uf(i, j) = 0.5_dp * (s%dd(s%im(i), j) + s%dd(i, j)) * u(i, j)
      end do
    end do
    do j = 1, n + 1
      do i = 1, nx
        s%vf(i, j) = 0.5_dp * (s%dd(i, j - 1) + s%dd(i, j)) * v(i, j)
        w = s%im(i)
        zeta = (v(i, j) - v(w, j)) * rdx - (u(i, j) - u(i, j - 1)) * rdy
        dcorner = 0.25_dp * (s%dd(w, j - 1) + s%dd(i, j - 1) + s%dd(w, j) + s%dd(i, j))
        s%q(i, j) = (cfg%f0 + zeta) / dcorner
      end do
    end do
    ! Bernoulli function on rows 0..n
    do j = 0, n
      do i = 1, nx
        s%bern(i, j) = 0.25_dp * (u(i, j)**2 + u(s%ip(i), j)**2 + v(i, j)**2 + v(i, j + 1)**2) + &
                       cfg%g * h(i, j)
      end do
    end do
    do j = 1, n
      do i = 1, nx
        w = s%im(i)
        e = s%ip(i)
        s%du(i, j) = 0.25_dp * (s%q(i, j) * (s%vf(w, j) + s%vf(i, j)) + &
                                s%q(i, j + 1) * (s%vf(w, j + 1) + s%vf(i, j + 1))) - &
                     (s%bern(i, j) - s%bern(w, j)) * rdx + s%fu(i, j)
        s%dv(i, j) = -0.25_dp * (s%q(i, j) * (s%uf(i, j - 1) + s%uf(i, j)) + &
                                 s%q(e, j) * (s%uf(e, j - 1) + s%uf(e, j))) - &
                     (s%bern(i, j) - s%bern(i, j - 1)) * rdy + s%fv(i, j)
        s%dh(i, j) = -((s%uf(e, j) - s%uf(i, j)) * rdx + (s%vf(i, j + 1) - s%vf(i, j)) * rdy) + &
                     s%fh(i, j)
      end do
    end do
  end subroutine dynamics

  !> The truth forcing theta of the state (u, v, h) into s%fu, s%fv, s%fh: wind stress (scaled
  !> by wind_scale) - drag + Laplacian viscosity, and (if relaxation) (h_eq - h) / relax_days.
  subroutine truth_forcing(cfg, s, u, v, h)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    real(dp), intent(in) :: u(:, 0:), v(:, 0:), h(:, 0:)
    integer :: i, j, w, e
    real(dp) :: r, rdx2, rdy2, rtau
    r = 0
    if (cfg%drag_days > 0) r = 1 / (cfg%drag_days * DAY)
    rtau = 0
    if (cfg%relaxation) rtau = 1 / (cfg%relax_days * DAY)
    rdx2 = 1 / cfg%dx**2
    rdy2 = 1 / cfg%dy**2
    do j = 1, s%n
      do i = 1, cfg%nx
        w = s%im(i)
        e = s%ip(i)
        s%fu(i, j) = cfg%wind_scale * s%wind_u(i, j) - r * u(i, j) + cfg%viscosity * &
                     ((u(e, j) - 2 * u(i, j) + u(w, j)) * rdx2 + &
                      (u(i, j + 1) - 2 * u(i, j) + u(i, j - 1)) * rdy2)
        s%fv(i, j) = cfg%wind_scale * s%wind_v(i, j) - r * v(i, j) + cfg%viscosity * &
                     ((v(e, j) - 2 * v(i, j) + v(w, j)) * rdx2 + &
                      (v(i, j + 1) - 2 * v(i, j) + v(i, j - 1)) * rdy2)
        s%fh(i, j) = rtau * (s%h_eq(i, j) - h(i, j))
      end do
    end do
  end subroutine truth_forcing

  !> NN input of one variable a for cell (i, j): centre, west, east, south, north.
  pure subroutine stencil5(a, i, j, w, e, x)
    real(dp), intent(in) :: a(:, 0:)
    integer, intent(in) :: i, j, w, e
    real(wp), intent(out) :: x(5)
    x(1) = real(a(i, j), wp)
    x(2) = real(a(w, j), wp)
    x(3) = real(a(e, j), wp)
    x(4) = real(a(i, j - 1), wp)
    x(5) = real(a(i, j + 1), wp)
  end subroutine stencil5

  !> theta of the state (u, v, h) from the closure, into s%fu, s%fv, s%fh. For 'nn', one coupler
  !> call with all of this rank's columns (local column c = i + (j-1) nx, global offset
  !> (first-1) nx). stat /= 0: the NN failed.
  subroutine forcing(cfg, s, step, closure, u, v, h, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    integer, intent(in) :: step
    character(len=*), intent(in) :: closure
    real(dp), intent(in) :: u(:, 0:), v(:, 0:), h(:, 0:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: i, j, c
    real(dp) :: t0
    stat = 0
    errmsg = ''
    select case (closure)
    case ('none')
      s%fu = 0
      s%fv = 0
      s%fh = 0
    case ('truth')
      call truth_forcing(cfg, s, u, v, h)
    case ('nn')
      do j = 1, s%n
        do i = 1, cfg%nx
          c = i + (j - 1) * cfg%nx
          call stencil5(u, i, j, s%im(i), s%ip(i), s%nn_in(1:5, c))
          call stencil5(v, i, j, s%im(i), s%ip(i), s%nn_in(6:10, c))
          call stencil5(h, i, j, s%im(i), s%ip(i), s%nn_in(11:15, c))
        end do
      end do
      t0 = wall_clock()
      call colnn_coupler_run(s%nn_in, s%nn_out, errmsg, stat, &
                             column_offset=(s%first - 1) * cfg%nx, step=step)
      s%t_nn = s%t_nn + (wall_clock() - t0)
      do j = 1, s%n
        do i = 1, cfg%nx
          c = i + (j - 1) * cfg%nx
          s%fu(i, j) = real(s%nn_out(1, c), dp)
          s%fv(i, j) = real(s%nn_out(2, c), dp)
          s%fh(i, j) = real(s%nn_out(3, c), dp)
        end do
      end do
    end select
  end subroutine forcing

  !> One RK stage: halos of (u, v, h), theta from the closure, the tendencies into s%du, s%dv,
  !> s%dh. A failure on any rank is a failure on every rank (stat /= 0 everywhere).
  subroutine stage_tendency(cfg, s, step, closure, u, v, h, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    integer, intent(in) :: step
    character(len=*), intent(in) :: closure
    real(dp), intent(inout) :: u(:, 0:), v(:, 0:), h(:, 0:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    call ring_exchange(u, s%n, 1, 1, s%comm)
    call ring_exchange(v, s%n, 1, 1, s%comm)
    call ring_exchange(h, s%n, 1, 1, s%comm)
    call forcing(cfg, s, step, closure, u, v, h, stat, errmsg)
    if (share_error(stat /= 0, errmsg, s%comm)) then
      stat = 1
      return
    end if
    call dynamics(cfg, s, u, v, h)
  end subroutine stage_tendency

  !> One SSP-RK3 (Shu-Osher) step of the state with theta from `closure` at every stage:
  !>   x1 = x + dt L(x),  x2 = 3/4 x + 1/4 (x1 + dt L(x1)),  x <- 1/3 x + 2/3 (x2 + dt L(x2)).
  subroutine sw_step(cfg, s, step, closure, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    integer, intent(in) :: step
    character(len=*), intent(in) :: closure
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(dp), parameter :: THIRD = 1.0_dp / 3, TWO_THIRDS = 2.0_dp / 3
    real(dp) :: dt
    integer :: n
    dt = cfg%dt
    n = s%n
    call stage_tendency(cfg, s, step, closure, s%u, s%v, s%h, stat, errmsg)
    if (stat /= 0) return
    s%fh1 = s%fh
    s%us(:, 1:n) = s%u(:, 1:n) + dt * s%du
    s%vs(:, 1:n) = s%v(:, 1:n) + dt * s%dv
    s%hs(:, 1:n) = s%h(:, 1:n) + dt * s%dh
    call stage_tendency(cfg, s, step, closure, s%us, s%vs, s%hs, stat, errmsg)
    if (stat /= 0) return
    s%us(:, 1:n) = 0.75_dp * s%u(:, 1:n) + 0.25_dp * (s%us(:, 1:n) + dt * s%du)
    s%vs(:, 1:n) = 0.75_dp * s%v(:, 1:n) + 0.25_dp * (s%vs(:, 1:n) + dt * s%dv)
    s%hs(:, 1:n) = 0.75_dp * s%h(:, 1:n) + 0.25_dp * (s%hs(:, 1:n) + dt * s%dh)
    call stage_tendency(cfg, s, step, closure, s%us, s%vs, s%hs, stat, errmsg)
    if (stat /= 0) return
    s%u(:, 1:n) = THIRD * s%u(:, 1:n) + TWO_THIRDS * (s%us(:, 1:n) + dt * s%du)
    s%v(:, 1:n) = THIRD * s%v(:, 1:n) + TWO_THIRDS * (s%vs(:, 1:n) + dt * s%dv)
    s%h(:, 1:n) = THIRD * s%h(:, 1:n) + TWO_THIRDS * (s%hs(:, 1:n) + dt * s%dh)
  end subroutine sw_step

  ! ---------------------------------------------------------------------------------------
  ! checks and global diagnostics

  !> The per-step failure test (collective): non-finite u, v, h; depth + h <= 0; |u| or |v| >
  !> max_speed. failed is the same on every rank, and so are reason, variable and msg.
  subroutine check_state(cfg, s, failed, reason, variable, msg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(in) :: s
    logical, intent(out) :: failed
    character(len=*), intent(out) :: reason, variable, msg
    integer :: code, i, j, ierr
    real(dp) :: umax, vmax, dmin
    code = C_OK
    umax = 0
    vmax = 0
    dmin = huge(1.0_dp)
    do j = 1, s%n
      do i = 1, cfg%nx
        if (.not. (abs(s%u(i, j)) <= huge(1.0_dp))) code = min(code, C_NAN_U)
        if (.not. (abs(s%v(i, j)) <= huge(1.0_dp))) code = min(code, C_NAN_V)
        if (.not. (abs(s%h(i, j)) <= huge(1.0_dp))) code = min(code, C_NAN_H)
        umax = max(umax, abs(s%u(i, j)))
        vmax = max(vmax, abs(s%v(i, j)))
        dmin = min(dmin, cfg%depth + s%h(i, j))
      end do
    end do
    if (code == C_OK) then
      if (dmin <= 0) then
        code = C_DEPTH
      else if (umax > cfg%max_speed) then
        code = C_SPEED_U
      else if (vmax > cfg%max_speed) then
        code = C_SPEED_V
      end if
    end if
    call MPI_Allreduce(MPI_IN_PLACE, code, 1, MPI_INTEGER, MPI_MIN, s%comm, ierr)
    failed = code /= C_OK
    reason = ''
    variable = ''
    msg = ''
    select case (code)
    case (C_NAN_U, C_NAN_V, C_NAN_H)
      reason = 'nonfinite'
      variable = merge('u', merge('v', 'h', code == C_NAN_V), code == C_NAN_U)
      msg = trim(variable)//' is not finite'
    case (C_DEPTH)
      call MPI_Allreduce(MPI_IN_PLACE, dmin, 1, MPI_DOUBLE_PRECISION, MPI_MIN, s%comm, ierr)
      reason = 'negative_depth'
      variable = 'h'
      msg = 'depth + h = '//ftoa(dmin)//' <= 0'
    case (C_SPEED_U, C_SPEED_V)
      if (code == C_SPEED_V) umax = vmax
      call MPI_Allreduce(MPI_IN_PLACE, umax, 1, MPI_DOUBLE_PRECISION, MPI_MAX, s%comm, ierr)
      reason = 'bounds'
      variable = merge('u', 'v', code == C_SPEED_U)
      msg = '|'//trim(variable)//'| = '//ftoa(umax)//' > max_speed = '//ftoa(cfg%max_speed)
    end select
  end subroutine check_state

  !> Gathers u, v, h and theta_h of the first stage (s%fh1) on rank 0 (collective) and returns
  !> there the global diagnostics d(ND), summed in one order (D_* in this module):
  !> domain means of KE = (depth + h)(u^2 + v^2)/2 with u^2, v^2 averaged to the centre and of
  !> PE = g h^2 / 2 (m^3/s^2), their sum; mass = area-integrated depth + h (m^3); mean and std
  !> of h; max and mean of the centred speed; the domain mean of theta_h.
  subroutine global_diag(cfg, s, d)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    real(dp), intent(out) :: d(ND)
    integer :: i, j, ny, nx, e, nn
    real(dp) :: sh, sh2, ke, pe, smax, ssum, speed, mean_h, st
    call gather_columns_dp(s%u(:, 1:s%n), s%ug, s%counts, s%displs, s%comm)
    call gather_columns_dp(s%v(:, 1:s%n), s%vg, s%counts, s%displs, s%comm)
    call gather_columns_dp(s%h(:, 1:s%n), s%hg, s%counts, s%displs, s%comm)
    call gather_columns_dp(s%fh1, s%wg, s%counts, s%displs, s%comm)
    d = ieee_nan()
    if (s%rank /= 0) return
    nx = cfg%nx
    ny = cfg%ny
    nn = nx * ny
    sh = 0; ke = 0; pe = 0; smax = 0; ssum = 0; st = 0
    do j = 1, ny
      do i = 1, nx
        e = s%ip(i)
        sh = sh + s%hg(i, j)
        ke = ke + 0.5_dp * (cfg%depth + s%hg(i, j)) * 0.5_dp * &
             (s%ug(i, j)**2 + s%ug(e, j)**2 + s%vg(i, j)**2 + s%vg(i, modulo(j, ny) + 1)**2)
        pe = pe + 0.5_dp * cfg%g * s%hg(i, j)**2
        speed = sqrt((0.5_dp * (s%ug(i, j) + s%ug(e, j)))**2 + &
                     (0.5_dp * (s%vg(i, j) + s%vg(i, modulo(j, ny) + 1)))**2)
        smax = max(smax, speed)
        ssum = ssum + speed
        st = st + s%wg(i, j)
      end do
    end do
    mean_h = sh / nn
    sh2 = 0
    do j = 1, ny
      do i = 1, nx
        sh2 = sh2 + (s%hg(i, j) - mean_h)**2
      end do
    end do
    d(D_MASS) = cfg%dx * cfg%dy * (nn * cfg%depth + sh)
    d(D_MEAN_H) = mean_h
    d(D_H_STD) = sqrt(sh2 / nn)
    d(D_KE) = ke / nn
    d(D_PE) = pe / nn
    d(D_ENERGY) = d(D_KE) + d(D_PE)
    d(D_MAX_SPEED) = smax
    d(D_MEAN_SPEED) = ssum / nn
    d(D_THETA_H_MEAN) = st / nn
  end subroutine global_diag

  ! ---------------------------------------------------------------------------------------
  ! coarse mode: steps to failure

  subroutine run_coarse(cfg, s, r, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: step, n_out, i_out, i, j, warn_step, flag
    real(dp), allocatable :: d_time(:), d_step(:), dts(:, :)
    real(dp) :: d(ND), d0(ND), e_max
    logical :: failed, check_energy
    character(len=32) :: reason, variable
    character(len=1024) :: msg

    n_out = cfg%n_steps / cfg%output_interval + 2
    allocate (d_time(n_out), d_step(n_out), dts(ND, n_out), source=ieee_nan())
    i_out = 0
    warn_step = -1
    e_max = ieee_nan()
    stat = 0
    r%status = 'completed'
    check_energy = cfg%energy_max > 0 .or. cfg%energy_warn > 0

    ! optional truth-forced spin-up (not counted in the steps; from a seeded state)
    do step = 1, cfg%spinup_steps
      call sw_step(cfg, s, 0, 'truth', stat, errmsg)
    end do
    s%fh1 = ieee_nan()
    call record(0)
    d0 = dts(:, 1)
    do step = 1, cfg%n_steps
      call sw_step(cfg, s, step, cfg%closure, stat, errmsg)
      if (stat /= 0) then
        call fail_at(step, 'nn_error', 'theta', errmsg)
        exit
      end if
      if (step == cfg%inject_nan_step) then
        j = (cfg%inject_nan_column - 1) / cfg%nx + 1 - s%first + 1
        i = modulo(cfg%inject_nan_column - 1, cfg%nx) + 1
        if (j >= 1 .and. j <= s%n) s%h(i, j) = injected_value(cfg%inject_value)
      end if
      call check_state(cfg, s, failed, reason, variable, msg)
      if (failed) then
        call fail_at(step, reason, variable, msg)
        call record(step)
        exit
      end if
      if (check_energy .and. mod(step, cfg%energy_check_interval) == 0) then
        call global_diag(cfg, s, d)
        flag = 0
        if (s%rank == 0) then
          if (.not. (e_max >= d(D_ENERGY))) e_max = d(D_ENERGY)
          if (cfg%energy_warn > 0 .and. warn_step < 0 .and. d(D_ENERGY) > cfg%energy_warn) &
            warn_step = step
          if (cfg%energy_max > 0 .and. .not. (d(D_ENERGY) <= cfg%energy_max)) then
            flag = 1
            msg = 'energy = '//ftoa(d(D_ENERGY))//' > energy_max = '//ftoa(cfg%energy_max)
          end if
        end if
        call bcast_int(flag, s%comm)
        if (flag /= 0) then
          call bcast_str(msg, s%comm)
          call fail_at(step, 'energy', 'energy', msg)
          call record(step)
          exit
        end if
      end if
      if (mod(step, cfg%output_interval) == 0) call record(step)
    end do
    if (r%status == 'completed') r%steps = cfg%n_steps
    stat = 0
    ! the final state (rank 0's ug, vg, hg are written as the final fields)
    call global_diag(cfg, s, d)
    call r%clear_extras()
    call r%add_extra('energy_warn_step', real(warn_step, dp))
    call r%add_extra('max_energy', max_finite([e_max, dts(D_ENERGY, 1:i_out)]))
    call r%add_extra('mean_energy', mean_finite(dts(D_ENERGY, 1:i_out)))
    call r%add_extra('final_energy', d(D_ENERGY))
    call r%add_extra('mean_ke', mean_finite(dts(D_KE, 1:i_out)))
    call r%add_extra('mean_pe', mean_finite(dts(D_PE, 1:i_out)))
    call r%add_extra('mean_h_std', mean_finite(dts(D_H_STD, 1:i_out)))
    call r%add_extra('mean_speed', mean_finite(dts(D_MEAN_SPEED, 1:i_out)))
    call r%add_extra('mean_h_drift', d(D_MEAN_H) - d0(D_MEAN_H))
    call r%add_extra('mass_rel_drift', (d(D_MASS) - d0(D_MASS)) / d0(D_MASS))
    call r%add_extra('rmse_ke', rms_vs(dts(D_KE, 1:i_out), cfg%clim_ke))
    call r%add_extra('rmse_pe', rms_vs(dts(D_PE, 1:i_out), cfg%clim_pe))
    call r%add_extra('rmse_h_std', rms_vs(dts(D_H_STD, 1:i_out), cfg%clim_h_std))
    call r%add_extra('rmse_speed', rms_vs(dts(D_MEAN_SPEED, 1:i_out), cfg%clim_speed_mean))
    if (s%rank == 0) call write_diagnostics(stat, errmsg)
    call bcast_int(stat, s%comm)
    if (stat /= 0) call bcast_str(errmsg, s%comm)
  contains
    subroutine fail_at(step_, reason_, variable_, msg_)
      integer, intent(in) :: step_
      character(len=*), intent(in) :: reason_, variable_, msg_
      r%status = 'failed'
      r%steps = step_
      r%failure_step = step_
      r%reason = reason_
      r%variable = variable_
      r%message = msg_
    end subroutine fail_at

    !> One diagnostics record at `step_` (collective: gathers the state on rank 0).
    subroutine record(step_)
      integer, intent(in) :: step_
      real(dp) :: t0
      t0 = wall_clock()
      if (i_out >= n_out) return
      i_out = i_out + 1
      call global_diag(cfg, s, dts(:, i_out))
      d_time(i_out) = step_ * cfg%dt
      d_step(i_out) = step_
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine record


    subroutine write_diagnostics(st, msg_)
      integer, intent(out) :: st
      character(len=*), intent(out) :: msg_
      type(h5_out_t) :: out
      real(dp) :: t0
      integer :: k
      t0 = wall_clock()
      call out%create(trim(cfg%output_dir)//'/diagnostics.h5')
      call out%dim('time', d_time(1:i_out))
      call out%put1('step', d_step(1:i_out), 'time')
      do k = 1, ND
        call out%put1(trim(DIAG_NAMES(k)), dts(k, 1:i_out), 'time')
      end do
      call out%put1('bias_ke', bias(dts(D_KE, 1:i_out), cfg%clim_ke), 'time')
      call out%put1('bias_pe', bias(dts(D_PE, 1:i_out), cfg%clim_pe), 'time')
      call out%put1('bias_h_std', bias(dts(D_H_STD, 1:i_out), cfg%clim_h_std), 'time')
      call out%put1('bias_speed', bias(dts(D_MEAN_SPEED, 1:i_out), cfg%clim_speed_mean), 'time')
      call write_grid(cfg, out)
      call out%put2('u', s%ug, [character(len=8) :: 'x', 'y'])
      call out%put2('v', s%vg, [character(len=8) :: 'x', 'y'])
      call out%put2('h', s%hg, [character(len=8) :: 'x', 'y'])
      call write_params(cfg, out)
      call out%attr_str('closure', trim(cfg%closure))
      call out%attr_str('status', trim(r%status))
      call out%attr_real('failure_step', real(r%failure_step, dp))
      call out%attr_real('energy_warn_step', real(warn_step, dp))
      call out%attr_real('energy_max', cfg%energy_max)
      call out%attr_real('energy_warn', cfg%energy_warn)
      call out%attr_real('clim_ke', cfg%clim_ke)
      call out%attr_real('clim_pe', cfg%clim_pe)
      call out%attr_real('clim_h_std', cfg%clim_h_std)
      call out%attr_real('clim_speed_mean', cfg%clim_speed_mean)
      call out%commit(st, msg_)
      if (st == 0) r%diagnostics = 'diagnostics.h5'
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine write_diagnostics
  end subroutine run_coarse

  ! ---------------------------------------------------------------------------------------
  ! truth mode: dynamics + the truth forcing; snapshots of (u, v, h, theta) for training

  subroutine run_truth(cfg, s, r, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    type(sw_state_t), intent(inout) :: s
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: step, n_samp, i_samp, mg, ng
    real(dp), allocatable :: usnap(:, :, :), vsnap(:, :, :), hsnap(:, :, :), tusnap(:, :, :), &
                             tvsnap(:, :, :), thsnap(:, :, :), tsnap(:), dts(:, :)
    real(dp) :: d(ND), d0(ND)
    logical :: failed
    character(len=32) :: reason, variable
    character(len=1024) :: msg

    n_samp = cfg%n_steps / cfg%sample_interval
    mg = merge(cfg%nx, 1, s%rank == 0)
    ng = merge(cfg%ny, 1, s%rank == 0)
    if (s%rank /= 0) n_samp = 1
    allocate (usnap(mg, ng, n_samp), vsnap(mg, ng, n_samp), hsnap(mg, ng, n_samp), &
              tusnap(mg, ng, n_samp), tvsnap(mg, ng, n_samp), thsnap(mg, ng, n_samp), &
              tsnap(n_samp), dts(ND, n_samp), source=ieee_nan())
    i_samp = 0
    call global_diag(cfg, s, d0)
    r%status = 'completed'
    stat = 0
    do step = 1, cfg%spinup_steps + cfg%n_steps
      call sw_step(cfg, s, step, 'truth', stat, errmsg)
      call check_state(cfg, s, failed, reason, variable, msg)
      if (failed) then
        r%status = 'failed'
        r%reason = reason
        r%variable = variable
        r%failure_step = step
        r%message = 'the truth run: '//trim(msg)//' (is dt too large?)'
        exit
      end if
      if (step > cfg%spinup_steps .and. mod(step - cfg%spinup_steps, cfg%sample_interval) == 0) then
        call sample(step)
      end if
    end do
    r%steps = min(step, cfg%spinup_steps + cfg%n_steps)
    r%max_steps = cfg%spinup_steps + cfg%n_steps
    stat = 0
    call global_diag(cfg, s, d)
    call r%clear_extras()
    call r%add_extra('max_energy', max_finite(dts(D_ENERGY, 1:i_samp)))
    call r%add_extra('min_energy', -max_finite(-dts(D_ENERGY, 1:i_samp)))
    call r%add_extra('mean_energy', mean_finite(dts(D_ENERGY, 1:i_samp)))
    call r%add_extra('mean_ke', mean_finite(dts(D_KE, 1:i_samp)))
    call r%add_extra('mean_pe', mean_finite(dts(D_PE, 1:i_samp)))
    call r%add_extra('mean_h_std', mean_finite(dts(D_H_STD, 1:i_samp)))
    call r%add_extra('mean_speed', mean_finite(dts(D_MEAN_SPEED, 1:i_samp)))
    call r%add_extra('max_speed', max_finite(dts(D_MAX_SPEED, 1:i_samp)))
    call r%add_extra('mean_h_drift', d(D_MEAN_H) - d0(D_MEAN_H))
    call r%add_extra('mass_rel_drift', (d(D_MASS) - d0(D_MASS)) / d0(D_MASS))
    if (s%rank == 0) call write_truth(stat, errmsg)
    call bcast_int(stat, s%comm)
    if (stat /= 0) call bcast_str(errmsg, s%comm)
  contains
    !> One training sample (collective): the state and theta of the state, gathered on rank 0.
    subroutine sample(step_)
      integer, intent(in) :: step_
      real(dp) :: t0
      t0 = wall_clock()
      call ring_exchange(s%u, s%n, 1, 1, s%comm)
      call ring_exchange(s%v, s%n, 1, 1, s%comm)
      call ring_exchange(s%h, s%n, 1, 1, s%comm)
      call truth_forcing(cfg, s, s%u, s%v, s%h)
      s%fh1 = s%fh
      i_samp = i_samp + 1
      call global_diag(cfg, s, d)
      if (s%rank == 0) then
        usnap(:, :, i_samp) = s%ug
        vsnap(:, :, i_samp) = s%vg
        hsnap(:, :, i_samp) = s%hg
        thsnap(:, :, i_samp) = s%wg
        tsnap(i_samp) = (step_ - cfg%spinup_steps) * cfg%dt
        dts(:, i_samp) = d
      end if
      call gather_columns_dp(s%fu, s%wg, s%counts, s%displs, s%comm)
      if (s%rank == 0) tusnap(:, :, i_samp) = s%wg
      call gather_columns_dp(s%fv, s%wg, s%counts, s%displs, s%comm)
      if (s%rank == 0) tvsnap(:, :, i_samp) = s%wg
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine sample


    subroutine write_truth(st, msg_)
      integer, intent(out) :: st
      character(len=*), intent(out) :: msg_
      type(h5_out_t) :: out
      character(len=8), parameter :: DIMS3(3) = [character(len=8) :: 'x', 'y', 'time']
      real(dp) :: t0
      integer :: k
      t0 = wall_clock()
      call out%create(trim(cfg%output_dir)//'/truth.h5')
      call out%dim('time', tsnap(1:i_samp))
      call write_grid(cfg, out)
      call out%put3('u', usnap(:, :, 1:i_samp), DIMS3)
      call out%put3('v', vsnap(:, :, 1:i_samp), DIMS3)
      call out%put3('h', hsnap(:, :, 1:i_samp), DIMS3)
      call out%put3('theta_u', tusnap(:, :, 1:i_samp), DIMS3)
      call out%put3('theta_v', tvsnap(:, :, 1:i_samp), DIMS3)
      call out%put3('theta_h', thsnap(:, :, 1:i_samp), DIMS3)
      do k = 1, ND
        call out%put1(trim(DIAG_NAMES(k)), dts(k, 1:i_samp), 'time')
      end do
      call write_params(cfg, out)
      call out%attr_real('sample_interval', real(cfg%sample_interval, dp))
      call out%attr_real('spinup_steps', real(cfg%spinup_steps, dp))
      call out%attr_real('seed', real(cfg%seed, dp))
      call out%commit(st, msg_)
      if (st == 0) r%diagnostics = 'truth.h5'
      s%t_io = s%t_io + (wall_clock() - t0)
    end subroutine write_truth
  end subroutine run_truth

  ! ---------------------------------------------------------------------------------------
  ! output helpers

  !> The x and y coordinates: cell-centre (h-point) positions in m; u(i, j) lies dx/2 west of
  !> x(i), v(i, j) dy/2 south of y(j).
  subroutine write_grid(cfg, out)
    type(sw_config_t), intent(in) :: cfg
    type(h5_out_t), intent(inout) :: out
    integer :: i
    call out%dim('x', [((i - 0.5_dp) * cfg%dx, i = 1, cfg%nx)])
    call out%dim('y', [((i - 0.5_dp) * cfg%dy, i = 1, cfg%ny)])
  end subroutine write_grid

  !> The model and forcing parameters as file attributes (SI units; time in s).
  subroutine write_params(cfg, out)
    type(sw_config_t), intent(in) :: cfg
    type(h5_out_t), intent(inout) :: out
    call out%attr_str('host', 'sw')
    call out%attr_str('mode', trim(cfg%mode))
    call out%attr_str('grid', 'Arakawa C: h(i,j) at the cell centre, u(i,j) on the west face, '// &
                      'v(i,j) on the south face; x, y = cell centres (m); time in s')
    call out%attr_real('nx', real(cfg%nx, dp))
    call out%attr_real('ny', real(cfg%ny, dp))
    call out%attr_real('dx', cfg%dx)
    call out%attr_real('dy', cfg%dy)
    call out%attr_real('f0', cfg%f0)
    call out%attr_real('g', cfg%g)
    call out%attr_real('depth', cfg%depth)
    call out%attr_real('viscosity', cfg%viscosity)
    call out%attr_real('drag_days', cfg%drag_days)
    call out%attr_real('wind_u0', cfg%wind_u0)
    call out%attr_real('wind_days', cfg%wind_days)
    call out%attr_real('wind_scale', cfg%wind_scale)
    call out%attr_real('relax_days', cfg%relax_days)
    call out%attr_real('relaxation', merge(1.0_dp, 0.0_dp, cfg%relaxation))
    call out%attr_real('h_eq_amplitude', cfg%h_eq_amplitude)
    call out%attr_real('dt', cfg%dt)
  end subroutine write_params

  ! ---------------------------------------------------------------------------------------

  real(dp) function ieee_nan()
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
    ieee_nan = ieee_value(1.0_dp, ieee_quiet_nan)
  end function ieee_nan

  pure logical function finite(x)
    real(dp), intent(in) :: x
    finite = abs(x) <= huge(1.0_dp)
  end function finite

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

  real(dp) function max_finite(a)
    real(dp), intent(in) :: a(:)
    logical :: ok(size(a))
    ok = abs(a) <= huge(1.0_dp)
    if (count(ok) == 0) then
      max_finite = ieee_nan()
    else
      max_finite = maxval(a, mask=ok)
    end if
  end function max_finite

  !> a - clim, or NaN where the climatology is not given (clim = 0).
  function bias(a, clim) result(b)
    real(dp), intent(in) :: a(:), clim
    real(dp) :: b(size(a))
    if (clim > 0) then
      b = a - clim
    else
      b = ieee_nan()
    end if
  end function bias

  !> Root mean square over the finite records of a - clim (NaN where clim is not given).
  real(dp) function rms_vs(a, clim)
    real(dp), intent(in) :: a(:), clim
    if (clim > 0) then
      rms_vs = sqrt(mean_finite((a - clim)**2))
    else
      rms_vs = ieee_nan()
    end if
  end function rms_vs

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
end module sw_host
