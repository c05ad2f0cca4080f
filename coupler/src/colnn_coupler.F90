!> The NN parameterization as a host model calls it, in the style of a CCPP physics scheme:
!> colnn_coupler_init / _run / _finalize with errmsg/errflg (set on entry, never `stop`), no I/O
!> in _run, whole column chunks of any size. _run is safe to call from several threads at once
!> on different chunks (a host's OpenMP loop over chunks) with the results of a serial loop,
!> bit for bit; online training (targets) is refused there. A single network or an ensemble (with input noise)
!> stands behind it, and an optional online-training hook takes the host's targets.
!> For a CCPP host, colnn_ccpp (colnn_ccpp.F90, .meta) is this scheme in CCPP's own terms.
module colnn_coupler
  use colnn
  use colnn_strings, only: str
  !$ use omp_lib, only: omp_in_parallel
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  implicit none
  private

  public :: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize, colnn_coupler_config_t
  public :: colnn_coupler_sizes, colnn_coupler_get_config, colnn_scheme_t, colnn_coupler_timers
  public :: colnn_fallback_monitor_t, colnn_coupler_fallback_monitor, colnn_coupler_fallbacks
  public :: colnn_coupler_uses_closure, colnn_coupler_save, colnn_coupler_online_stats

  !> Read from the namelist group &colnn_coupler of the configuration file.
  type :: colnn_coupler_config_t
    character(len=64) :: name = ''             !< the scheme's name (several schemes, one file)
    character(len=1024) :: model_file = ''     !< a colnn (or FKB) file, or
    character(len=1024) :: ensemble = ''       !< a directory of *.colnn files or a list file
    !> ensemble input noise: one sd for every input, or one per input feature
    real, allocatable :: noise_sd(:)
    !> 'auto' (normalized when every member begins with a Normalization layer, raw when none
    !> does), 'normalized' (in the units after that layer) or 'raw' (the host's units)
    character(len=16) :: noise_units = 'auto'
    integer :: noise_seed = 0
    logical :: check_finite = .true.           !< NaN/Inf inputs or outputs set errflg
    !> each column's outputs the same bits whatever the chunk size or processor layout
    !> (network_t%batch_invariant; the library's default unless set)
    logical :: batch_invariant = BATCH_INVARIANT_DEFAULT
    logical :: online_training = .false.       !< _run with targets takes one optimizer step
    character(len=256) :: optimizer = 'adam learning_rate=0.0001'
    character(len=64) :: loss = 'mse'
    !> per-column fallback: a column whose outputs are not finite, or outside
    !> [fallback_lower, fallback_upper], takes the host's own closure for that column (passed
    !> to _run as `closure`) instead of stopping the run; the count goes to the host
    logical :: fallback = .false.
    !> bounds of the outputs: none, one for every output, or one per output
    real, allocatable :: fallback_lower(:), fallback_upper(:)
    !> the run fails when more than this share of the columns falls back at each of
    !> fallback_max_steps consecutive steps (the host's monitor: colnn_fallback_monitor_t).
    !> A few columns now and then is what fallback is for; a tenth of the domain for ten steps
    !> means the run is no longer a run of the network
    real :: fallback_max_share = 0.1
    integer :: fallback_max_steps = 10
    !> ramped coupling: outputs = w NN + (1 - w) closure with w = min(1, step / ramp_steps)
    !> (0: the network alone from the first step)
    integer :: ramp_steps = 0
  end type colnn_coupler_config_t

  !> The fallback verdict of one run, called by the host once a step with the step's fallback
  !> columns and columns summed over its chunks (and ranks): the run fails when more than
  !> max_share of the columns fell back at each of max_steps consecutive steps.
  type :: colnn_fallback_monitor_t
    real :: max_share = 0.1
    integer :: max_steps = 10
    integer :: over = 0                    !< consecutive steps over max_share so far
    integer(8) :: total = 0                !< fallback columns since the start
    integer(8) :: steps_with_fallback = 0  !< steps with at least one
    real :: max_step_share = 0             !< the largest share of a step
  contains
    procedure :: update => monitor_update
  end type colnn_fallback_monitor_t

  !> One coupled network (a model or an ensemble) with its configuration: a program may hold
  !> several (convection and radiation, say), each initialised from its own namelist group.
  !> init is idempotent (a second call with the same file and name does nothing); run is safe
  !> from several threads on different chunks; a scheme used before init or after finalize
  !> gives an error naming it.
  type :: colnn_scheme_t
    private
    logical :: initialized = .false.
    logical :: use_ensemble = .false.
    character(len=:), allocatable :: config_file
    type(network_t) :: net
    type(ensemble_t) :: ens
    type(trainer_t) :: trainer
    type(colnn_coupler_config_t) :: cfg
    integer :: n_in = 0, n_out = 0
    !> what _run cost since init: calls, columns, and seconds summed over calls (over the
    !> threads too, when a host calls from several at once)
    integer(8) :: calls = 0, columns = 0
    real(dp) :: seconds = 0
    !> columns that fell back to the host's closure since init (over threads and calls)
    integer(8) :: fallback_columns = 0
    !> the outputs' bounds, one per output (fallback)
    real(dp), allocatable :: lower(:), upper(:)
    !> the host passes its own closure to _run (init's host_closure)
    logical :: host_closure = .false.
    !> online training: optimizer steps taken, steps skipped (a non-finite target, loss or
    !> gradient: the weights stay as they were), the loss of the last step taken
    integer(8) :: online_steps = 0, online_skipped = 0
    real(wp) :: online_loss = 0
    !> the network normalizes with batch statistics in training (a batch of one cannot)
    logical :: batchnorm = .false.
  contains
    procedure :: init => scheme_init
    procedure, private :: run_sp => scheme_run_sp
    procedure, private :: run_dp => scheme_run_dp
    !> outputs = NN(inputs) for one chunk: real32 or real64, (features, columns) or with
    !> columns_first=.true. (columns, features)
    generic :: run => run_sp, run_dp
    procedure :: finalize => scheme_finalize
    procedure :: sizes => scheme_sizes
    procedure :: config => scheme_config
    procedure :: label => scheme_label
    procedure :: timers => scheme_timers
    !> columns that fell back since init
    procedure :: fallbacks => scheme_fallbacks
    !> a fallback monitor with this scheme's thresholds, for one run of the host
    procedure :: fallback_monitor => scheme_fallback_monitor
    !> whether _run needs the host's closure (fallback or ramp)
    procedure :: uses_closure => scheme_uses_closure
    !> writes the network (with its optimizer state when it trains online) to a model file
    procedure :: save => scheme_save
    !> online training's steps taken and skipped, and the last loss
    procedure :: online_stats => scheme_online_stats
    final :: scheme_final
  end type colnn_scheme_t

  !> the names of the initialised schemes: two live schemes never share a name
  type :: name_t
    character(len=64) :: s = ''
    logical :: used = .false.
  end type name_t
  type(name_t), allocatable, save :: live_names(:)

  !> An ensemble works on (features, columns) arrays in the library's precision: a host's other
  !> kind or layout is staged here (per thread, kept between calls, only growing).
  real(wp), allocatable, save :: stage_in(:), stage_out(:)
  !$omp threadprivate(stage_in, stage_out)

  interface colnn_coupler_run
    module procedure colnn_coupler_run_sp, colnn_coupler_run_dp
  end interface colnn_coupler_run

  !> the scheme behind the module-level colnn_coupler_init/_run/_finalize
  type(colnn_scheme_t), save, target :: default_scheme

contains

  !> Reads the scheme's &colnn_coupler group from `config_file`, loads its model, checks that it
  !> maps n_inputs host features to n_outputs. `name` picks the group whose `name` key matches
  !> (a file may hold several); without it the file must hold one group.
  subroutine scheme_init(self, config_file, n_inputs, n_outputs, errmsg, errflg, name, &
                         input_vars, output_vars, host_closure)
    class(colnn_scheme_t), intent(inout) :: self
    character(len=*), intent(in) :: config_file  !! namelist file with &colnn_coupler group(s)
    integer, intent(in) :: n_inputs, n_outputs   !! features per column the host passes, expects
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    character(len=*), intent(in), optional :: name !! the group's `name` (several schemes)
    !> what the host passes at each input position, 'NAME LEVEL UNITS' (checked against the
    !> model's recorded features: harness convert --inputs-meta)
    character(len=*), intent(in), optional :: input_vars(:)
    !> what the host expects at each output position, 'NAME LEVEL UNITS'
    character(len=*), intent(in), optional :: output_vars(:)
    !> the host passes its own closure of each column to _run (`closure`), which fallback and
    !> ramp_steps need; absent: it does not
    logical, intent(in), optional :: host_closure
    character(len=:), allocatable :: want, context
    type(colnn_coupler_config_t) :: found
    logical :: is_dir
    integer :: stat

    errmsg = ''
    errflg = 0
    want = ''
    if (present(name)) want = trim(name)
    context = 'colnn_coupler_init'
    if (len(want) > 0) context = context//" (scheme '"//want//"')"
    if (self%initialized) then
      if (self%config_file == config_file .and. self%cfg%name == want .and. &
          self%n_in == n_inputs .and. self%n_out == n_outputs) return
      errflg = 1
      errmsg = context//': this scheme is already initialised from '//self%config_file// &
               trim(scheme_label(self))//'; finalize it first'
      return
    end if
    if (len(want) > len(found%name)) then
      errflg = 1
      errmsg = context//': a scheme name has at most '//str(len(found%name))//' characters'
      return
    end if
    if (name_is_live(want)) then
      errflg = 1
      errmsg = context//": a scheme named '"//want//"' is already initialised; each needs "// &
               'its own name'
      return
    end if
    call read_group(config_file, want, found, errmsg, errflg)
    if (errflg /= 0) return
    self%host_closure = .false.
    if (present(host_closure)) self%host_closure = host_closure
    if ((found%fallback .or. found%ramp_steps > 0) .and. .not. self%host_closure) then
      errflg = 1
      if (found%fallback) then
        errmsg = context//': '//trim(config_file)//': fallback = .true. replaces a bad '// &
                 'column by the host''s own closure, and this host has none (it does not '// &
                 'pass host_closure = .true. to init)'
      else
        errmsg = context//': '//trim(config_file)//': ramp_steps = '//str(found%ramp_steps)// &
                 ' blends the network with the host''s own closure, and this host has none '// &
                 '(it does not pass host_closure = .true. to init)'
      end if
      return
    end if
    self%cfg = found
    self%use_ensemble = len_trim(found%ensemble) > 0
    stat = 0
    if (self%use_ensemble) then
      inquire (file=trim(found%ensemble)//'/.', exist=is_dir)
      if (is_dir) then
        call self%ens%load_dir(trim(found%ensemble), stat, errmsg)
      else
        call self%ens%load_list(trim(found%ensemble), stat, errmsg)
      end if
      if (stat == 0 .and. any(found%noise_sd > 0)) then
        call set_ensemble_noise(self, found, stat, errmsg)
      end if
      if (stat == 0) then
        self%n_in = self%ens%n_inputs
        self%n_out = self%ens%n_outputs
        ! with fallback, a non-finite output is a column to replace, not an error: the
        ! inputs are checked here instead
        self%ens%members(:)%check_finite = found%check_finite .and. .not. found%fallback
        call self%ens%set_batch_invariant(found%batch_invariant)
      end if
    else
      call self%net%load(trim(found%model_file), stat, errmsg)
      if (stat == 0) then
        self%n_in = self%net%n_inputs
        self%n_out = self%net%n_outputs
        self%net%check_finite = found%check_finite .and. .not. found%fallback
        call self%net%set_batch_invariant(found%batch_invariant)
      end if
      if (stat == 0 .and. found%online_training) then
        call self%trainer%configure(trim(found%optimizer), trim(found%loss), stat, errmsg)
        self%batchnorm = has_batchnorm(self%net)
      end if
    end if
    if (stat /= 0) then
      errflg = 1
      errmsg = context//': '//trim(errmsg)
      call release(self)
      return
    end if
    if (self%n_in /= n_inputs .or. self%n_out /= n_outputs) then
      errflg = 1
      errmsg = context//': the model maps '//str(self%n_in)//' inputs to '//str(self%n_out)// &
               ' outputs, the host passes '//str(n_inputs)//' features and expects '// &
               str(n_outputs)
      call release(self)
      return
    end if
    if (found%fallback) call set_bounds(self, found, context//': '//trim(config_file), errmsg, &
                                        errflg)
    if (errflg /= 0) then
      call release(self)
      return
    end if
    if (present(input_vars)) call check_declared(self, 'input', input_vars, context, errmsg, errflg)
    if (errflg == 0 .and. present(output_vars)) &
      call check_declared(self, 'output', output_vars, context, errmsg, errflg)
    if (errflg /= 0) then
      call release(self)
      return
    end if
    self%config_file = config_file
    self%calls = 0
    self%columns = 0
    self%seconds = 0
    self%fallback_columns = 0
    self%online_steps = 0
    self%online_skipped = 0
    self%online_loss = 0
    call register_name(found%name)
    self%initialized = .true.
  end subroutine scheme_init

  !> The host's declared variables of one side against the model's recorded features (every
  !> ensemble member's).
  subroutine check_declared(self, side, declared, context, errmsg, errflg)
    class(colnn_scheme_t), intent(in) :: self
    character(len=*), intent(in) :: side, declared(:), context
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: m
    errflg = 0
    errmsg = ''
    if (self%use_ensemble) then
      do m = 1, self%ens%n_members
        call check_against(self%ens%members(m), side, declared, context, errmsg, errflg)
        if (errflg /= 0) return
      end do
    else
      call check_against(self%net, side, declared, context, errmsg, errflg)
    end if
  end subroutine check_declared

  subroutine check_against(net, side, declared, context, errmsg, errflg)
    type(network_t), intent(in) :: net
    character(len=*), intent(in) :: side, declared(:), context
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    character(len=256), allocatable :: recorded(:)
    integer :: k, n, pos, m_index
    character(len=:), allocatable :: key
    errflg = 1
    n = merge(net%n_inputs, net%n_outputs, side == 'input')
    if (size(declared) /= n) then
      errmsg = context//': '//side//'_vars declares '//str(size(declared))// &
               ' variables, the model ('//net%source//') has '//str(n)//' '//side//'s'
      return
    end if
    allocate (recorded(n))
    recorded = ''
    key = side//'_feature '
    do k = 1, size(net%meta)
      if (index(net%meta(k), key) /= 1) cycle
      read (net%meta(k)(len(key) + 1:), *, iostat=pos) m_index
      if (pos /= 0 .or. m_index < 1 .or. m_index > n) cycle
      pos = index(net%meta(k)(len(key) + 1:), ' ') + len(key)
      recorded(m_index) = squeeze(net%meta(k)(pos + 1:))
    end do
    if (all(recorded == '')) then
      errmsg = context//': the host declares its '//side//' variables, but the model ('// &
               net%source//') does not describe its '//side//'s (record them with harness '// &
               'convert --'//side//'s-meta CSV)'
      return
    end if
    do k = 1, n
      if (squeeze(declared(k)) /= recorded(k)) then
        errmsg = context//': '//side//'_vars('//str(k)//") is '"//squeeze(declared(k))// &
                 "', the model ("//net%source//") has '"//trim(recorded(k))//"' at "//side// &
                 ' '//str(k)
        return
      end if
    end do
    errflg = 0
    errmsg = ''
  end subroutine check_against

  !> Blank-separated tokens joined by single blanks.
  pure function squeeze(text) result(s)
    character(len=*), intent(in) :: text
    character(len=:), allocatable :: s
    integer :: k
    logical :: gap
    s = ''
    gap = .false.
    do k = 1, len_trim(text)
      if (text(k:k) == ' ' .or. text(k:k) == achar(9)) then
        gap = len(s) > 0
      else
        if (gap) s = s//' '
        s = s//text(k:k)
        gap = .false.
      end if
    end do
  end function squeeze

  !> The ensemble's input noise from the configuration: one sd or one per feature, in raw or
  !> normalized units ('auto': normalized when every member normalizes its inputs).
  subroutine set_ensemble_noise(self, cfg, stat, errmsg)
    class(colnn_scheme_t), intent(inout) :: self
    type(colnn_coupler_config_t), intent(in) :: cfg
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    character(len=512) :: msg
    if (size(cfg%noise_sd) /= 1 .and. size(cfg%noise_sd) /= self%ens%n_inputs) then
      stat = 3
      errmsg = 'noise_sd gives '//str(size(cfg%noise_sd))//' values; give 1, or one per '// &
               'input feature ('//str(self%ens%n_inputs)//')'
      return
    end if
    select case (cfg%noise_units)
    case ('raw')
      call self%ens%set_noise(real(cfg%noise_sd, wp), int(cfg%noise_seed, 8), stat, errmsg)
    case ('normalized')
      call self%ens%set_noise(real(cfg%noise_sd, wp), int(cfg%noise_seed, 8), stat, errmsg, &
                              normalized=.true.)
    case default
      ! 'auto': normalized if the members allow it, raw if none normalizes, an error if some do
      call self%ens%set_noise(real(cfg%noise_sd, wp), int(cfg%noise_seed, 8), stat, msg, &
                              normalized=.true.)
      if (stat /= 0) then
        if (any_normalizes(self%ens)) then
          errmsg = 'noise_units = ''auto'': '//trim(msg)//' (some members normalize their '// &
                   'inputs and some do not: say noise_units = ''raw'' or make them agree)'
          return
        end if
        call self%ens%set_noise(real(cfg%noise_sd, wp), int(cfg%noise_seed, 8), stat, errmsg)
      end if
    end select
  end subroutine set_ensemble_noise

  logical function has_batchnorm(net)
    type(network_t), intent(in) :: net
    integer :: k
    has_batchnorm = .false.
    do k = 1, net%n_layers
      select type (layer => net%layers(k)%layer)
      type is (batchnorm_t)
        has_batchnorm = .true.
      end select
    end do
  end function has_batchnorm

  logical function any_normalizes(ens)
    type(ensemble_t), intent(in) :: ens
    integer :: m
    any_normalizes = .false.
    do m = 1, ens%n_members
      if (ens%members(m)%n_layers < 1) cycle
      select type (first => ens%members(m)%layers(1)%layer)
      type is (normalization_t)
        if (.not. first%invert) any_normalizes = .true.
      end select
    end do
  end function any_normalizes

  !> The &colnn_coupler group named `want` ('' : the file's only group), checked.
  subroutine read_group(config_file, want, found, errmsg, errflg)
    character(len=*), intent(in) :: config_file, want
    type(colnn_coupler_config_t), intent(out) :: found
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    character(len=64) :: name
    character(len=1024) :: model_file, ensemble
    integer, parameter :: MAX_NOISE = 100000
    real :: noise_sd(MAX_NOISE)
    character(len=16) :: noise_units
    integer :: noise_seed, u, ios, n_groups, n_match, n_sd
    logical :: check_finite, online_training, batch_invariant
    character(len=256) :: optimizer
    character(len=64) :: loss
    character(len=512) :: iomsg
    character(len=:), allocatable :: context, where
    integer, parameter :: MAX_BOUNDS = 100000
    logical :: fallback
    real :: fallback_lower(MAX_BOUNDS), fallback_upper(MAX_BOUNDS), fallback_max_share
    integer :: fallback_max_steps, ramp_steps, n_lo, n_hi, k
    namelist /colnn_coupler/ name, model_file, ensemble, noise_sd, noise_units, noise_seed, &
      check_finite, batch_invariant, online_training, optimizer, loss, fallback, &
      fallback_lower, fallback_upper, fallback_max_share, fallback_max_steps, ramp_steps

    errflg = 1
    context = 'colnn_coupler_init'
    if (len(want) > 0) context = context//" (scheme '"//want//"')"
    open (newunit=u, file=config_file, status='old', action='read', iostat=ios, iomsg=iomsg)
    if (ios /= 0) then
      errmsg = context//': cannot open '//trim(config_file)//': '//trim(iomsg)
      return
    end if
    n_groups = 0
    n_match = 0
    do
      ! each group starts from the defaults: nothing carries over from the one before
      ! an unset noise_sd element keeps -huge: the values given are the leading ones
      name = ''; model_file = ''; ensemble = ''; noise_sd = -huge(1.0); noise_seed = 0
      noise_units = 'auto'
      check_finite = .true.; online_training = .false.; batch_invariant = BATCH_INVARIANT_DEFAULT
      optimizer = 'adam learning_rate=0.0001'; loss = 'mse'
      fallback = .false.; fallback_lower = -huge(1.0); fallback_upper = -huge(1.0)
      fallback_max_share = 0.1; fallback_max_steps = 10; ramp_steps = 0
      read (u, nml=colnn_coupler, iostat=ios, iomsg=iomsg)
      if (ios /= 0) exit
      n_groups = n_groups + 1
      if (trim(name) /= want .and. len(want) > 0) cycle
      n_match = n_match + 1
      n_sd = count(noise_sd /= -huge(1.0))
      n_lo = count(fallback_lower /= -huge(1.0))
      n_hi = count(fallback_upper /= -huge(1.0))
      if (n_match == 1) found = colnn_coupler_config_t(name=name, model_file=model_file, &
                                                       ensemble=ensemble, &
                                                       noise_sd=noise_sd(1:n_sd), &
                                                       noise_units=noise_units, &
                                                       noise_seed=noise_seed, &
                                                       check_finite=check_finite, &
                                                       batch_invariant=batch_invariant, &
                                                       online_training=online_training, &
                                                       optimizer=optimizer, loss=loss, &
                                                       fallback=fallback, &
                                                       fallback_lower=fallback_lower(1:n_lo), &
                                                       fallback_upper=fallback_upper(1:n_hi), &
                                                       fallback_max_share=fallback_max_share, &
                                                       fallback_max_steps=fallback_max_steps, &
                                                       ramp_steps=ramp_steps)
    end do
    close (u)
    if (ios > 0) then
      errmsg = context//': '//trim(config_file)//': bad &colnn_coupler namelist (group '// &
               str(n_groups + 1)//'): '//trim(iomsg)
      return
    end if
    if (n_groups == 0) then
      errmsg = context//': '//trim(config_file)//': no complete &colnn_coupler group (is it '// &
               'missing, unterminated by /, or the last line without a newline?)'
      return
    end if
    if (len(want) == 0 .and. n_groups > 1) then
      errmsg = context//': '//trim(config_file)//' holds '//str(n_groups)//' &colnn_coupler '// &
               'groups: give the scheme name to use'
      return
    end if
    if (n_match == 0) then
      errmsg = context//': '//trim(config_file)//": no &colnn_coupler group with name = '"// &
               want//"'"
      return
    end if
    if (n_match > 1) then
      errmsg = context//': '//trim(config_file)//': '//str(n_match)//" &colnn_coupler groups "// &
               "have name = '"//want//"'"
      return
    end if
    if ((len_trim(found%model_file) == 0) .eqv. (len_trim(found%ensemble) == 0)) then
      errmsg = context//': '//trim(config_file)//': give exactly one of model_file and ensemble'
      return
    end if
    if (any(found%noise_sd < 0 .or. found%noise_sd /= found%noise_sd) .or. &
        any(abs(found%noise_sd) > huge(1.0))) then
      errmsg = context//': '//trim(config_file)//': noise_sd must be finite and >= 0'
      return
    end if
    if (count(found%noise_sd /= -huge(1.0)) /= size(found%noise_sd)) then
      errmsg = context//': '//trim(config_file)//': noise_sd must give its values from the '// &
               'first feature on, without gaps'
      return
    end if
    select case (found%noise_units)
    case ('auto', 'raw', 'normalized')
    case default
      errmsg = context//': '//trim(config_file)//": noise_units must be 'auto', 'raw' or "// &
               "'normalized', got '"//trim(found%noise_units)//"'"
      return
    end select
    if (any(found%noise_sd > 0) .and. len_trim(found%ensemble) == 0) then
      errmsg = context//': '//trim(config_file)//': input noise needs an ensemble'
      return
    end if
    if (found%online_training .and. len_trim(found%ensemble) > 0) then
      errmsg = context//': online training takes a single model, not an ensemble'
      return
    end if
    where = context//': '//trim(config_file)//': '
    ! a gap leaves an unset element among the leading ones taken
    if (any(found%fallback_lower == -huge(1.0)) .or. any(found%fallback_upper == -huge(1.0))) then
      errmsg = where//'fallback_lower and fallback_upper must give their values from the '// &
               'first output on, without gaps'
      return
    end if
    if (.not. found%fallback .and. (size(found%fallback_lower) > 0 .or. &
                                    size(found%fallback_upper) > 0)) then
      errmsg = where//'fallback_lower/fallback_upper are set but fallback = .false.: the '// &
               'bounds would do nothing (set fallback = .true. or remove them)'
      return
    end if
    if (any(found%fallback_lower /= found%fallback_lower) .or. &
        any(found%fallback_upper /= found%fallback_upper)) then
      errmsg = where//'fallback_lower and fallback_upper must be numbers, not NaN'
      return
    end if
    if (size(found%fallback_lower) == size(found%fallback_upper)) then
      do k = 1, size(found%fallback_lower)
        if (found%fallback_lower(k) > found%fallback_upper(k)) then
          errmsg = where//'fallback_lower('//str(k)//') = '// &
                   trim(real_text(found%fallback_lower(k)))//' is above fallback_upper('// &
                   str(k)//') = '//trim(real_text(found%fallback_upper(k)))
          return
        end if
      end do
    end if
    if (.not. (found%fallback_max_share > 0 .and. found%fallback_max_share <= 1)) then
      errmsg = where//'fallback_max_share must be in (0, 1] (a share of the columns), got '// &
               trim(real_text(found%fallback_max_share))
      return
    end if
    if (found%fallback_max_steps < 1) then
      errmsg = where//'fallback_max_steps must be >= 1, got '//str(found%fallback_max_steps)
      return
    end if
    if (found%ramp_steps < 0) then
      errmsg = where//'ramp_steps must be >= 0 (0: no ramp), got '//str(found%ramp_steps)
      return
    end if
    errflg = 0
    errmsg = ''
  end subroutine read_group

  !> x with 6 significant digits, without trailing zeros (0.1, not 0.100000001)
  function real_text(x) result(s)
    real, intent(in) :: x
    character(len=32) :: s
    integer :: k
    write (s, '(g0.6)') x
    s = adjustl(s)
    if (scan(s, 'Ee') == 0 .and. index(s, '.') > 0) then
      k = len_trim(s)
      do while (s(k:k) == '0')
        s(k:k) = ' '
        k = k - 1
      end do
      if (s(k:k) == '.') s(k:k) = ' '
    end if
  end function real_text

  !> The outputs' fallback bounds, one per output, from the configuration's (none, one for
  !> every output, or one per output; a single lower bound with one per output upper bound is
  !> fine).
  subroutine set_bounds(self, cfg, where, errmsg, errflg)
    class(colnn_scheme_t), intent(inout) :: self
    type(colnn_coupler_config_t), intent(in) :: cfg
    character(len=*), intent(in) :: where
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: k
    errflg = 0
    errmsg = ''
    call expand(cfg%fallback_lower, -huge(1.0_dp), 'fallback_lower', self%lower)
    if (errflg /= 0) return
    call expand(cfg%fallback_upper, huge(1.0_dp), 'fallback_upper', self%upper)
    if (errflg /= 0) return
    do k = 1, self%n_out
      if (self%lower(k) > self%upper(k)) then
        errflg = 1
        errmsg = where//': fallback_lower = '//trim(real_text(real(self%lower(k))))// &
                 ' is above fallback_upper = '//trim(real_text(real(self%upper(k))))// &
                 ' at output '//str(k)
        return
      end if
    end do
  contains
    subroutine expand(given, none, key, bounds)
      real, intent(in) :: given(:)
      real(dp), intent(in) :: none
      character(len=*), intent(in) :: key
      real(dp), allocatable, intent(out) :: bounds(:)
      allocate (bounds(self%n_out))
      select case (size(given))
      case (0)
        bounds = none
      case (1)
        bounds = real(given(1), dp)
      case default
        if (size(given) /= self%n_out) then
          errflg = 1
          errmsg = where//': '//key//' gives '//str(size(given))//' values; give 1, or one '// &
                   'per output ('//str(self%n_out)//')'
          return
        end if
        bounds = real(given, dp)
      end select
    end subroutine expand
  end subroutine set_bounds

  !> outputs = NN(inputs) for one chunk of columns, real32 arrays: inputs(n_inputs, ncol),
  !> outputs(n_outputs, ncol), or with `columns_first` (ncol, n_inputs), (ncol, n_outputs), a
  !> host's own (columns, levels) chunk. Kind and layout are handled where the columns enter the
  !> network's work blocks: the host makes no transposed or converted copy.
  !> column_offset: global index (0-based) of the chunk's first column (ensemble noise).
  !> step: the host's time step (the ensemble's noise key; chunks of one step share it).
  !> targets: with online_training, one optimizer step on (inputs, targets) after the forward
  !> (arrays in the library's precision and (features, columns)).
  !> closure: the host's own closure of the chunk's columns (kind and layout of outputs), which
  !> fallback and ramp_steps need; n_fallback: how many of the chunk's columns fell back to it.
  subroutine scheme_run_sp(self, inputs, outputs, errmsg, errflg, column_offset, targets, step, &
                           columns_first, closure, n_fallback)
    class(colnn_scheme_t), intent(inout) :: self
    real(sp), intent(in) :: inputs(:, :)
    real(sp), intent(out) :: outputs(:, :)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer, intent(in), optional :: column_offset
    real(wp), intent(in), optional :: targets(:, :)
    integer, intent(in), optional :: step
    logical, intent(in), optional :: columns_first
    real(sp), intent(in), optional :: closure(:, :)
    integer, intent(out), optional :: n_fallback
    call run_any(self, errmsg, errflg, column_offset, targets, step, columns_first, n_fallback, &
                 xs=inputs, ys=outputs, cs=closure)
  end subroutine scheme_run_sp

  !> As run for real32 arrays, for real64 ones.
  subroutine scheme_run_dp(self, inputs, outputs, errmsg, errflg, column_offset, targets, step, &
                           columns_first, closure, n_fallback)
    class(colnn_scheme_t), intent(inout) :: self
    real(dp), intent(in) :: inputs(:, :)
    real(dp), intent(out) :: outputs(:, :)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer, intent(in), optional :: column_offset
    real(wp), intent(in), optional :: targets(:, :)
    integer, intent(in), optional :: step
    logical, intent(in), optional :: columns_first
    real(dp), intent(in), optional :: closure(:, :)
    integer, intent(out), optional :: n_fallback
    call run_any(self, errmsg, errflg, column_offset, targets, step, columns_first, n_fallback, &
                 xd=inputs, yd=outputs, cd=closure)
  end subroutine scheme_run_dp

  subroutine run_any(self, errmsg, errflg, column_offset, targets, step, columns_first, &
                     n_fallback, xs, xd, ys, yd, cs, cd)
    class(colnn_scheme_t), intent(inout) :: self
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer, intent(in), optional :: column_offset
    real(wp), intent(in), optional :: targets(:, :)
    integer, intent(in), optional :: step
    logical, intent(in), optional :: columns_first
    integer, intent(out), optional :: n_fallback
    real(sp), intent(in), optional, target :: xs(:, :)
    real(dp), intent(in), optional, target :: xd(:, :)
    real(sp), intent(inout), optional, target :: ys(:, :)
    real(dp), intent(inout), optional, target :: yd(:, :)
    real(sp), intent(in), optional :: cs(:, :)
    real(dp), intent(in), optional :: cd(:, :)
    integer :: stat, nc, n_fb
    integer(8) :: col0, key, t0, t1, rate
    real(wp) :: loss
    logical :: cf, native, blend
    errmsg = ''
    errflg = 0
    n_fb = 0
    if (present(n_fallback)) n_fallback = 0
    call system_clock(t0, rate)
    if (.not. self%initialized) then
      errflg = 1
      errmsg = 'colnn_coupler_run: the scheme is not initialised (its init failed, was not '// &
               'called, or it was finalized)'
      return
    end if
    cf = .false.
    if (present(columns_first)) cf = columns_first
    blend = self%cfg%fallback .or. self%cfg%ramp_steps > 0
    if (blend) then
      call check_closure(self, cf, step, errmsg, errflg, xs, xd, ys, yd, cs, cd)
      if (errflg /= 0) return
    end if
    if (self%use_ensemble) then
      col0 = 0
      if (present(column_offset)) col0 = column_offset
      key = -1
      if (present(step)) key = step
      ! an ensemble takes (features, columns) in wp: the host's own arrays when they are that
      native = .not. cf .and. ((present(xs) .and. wp == sp) .or. (present(xd) .and. wp == dp))
      if (native) then
        call ensemble_native(self, col0, key, stat, errmsg, xs, xd, ys, yd)
      else
        call ensemble_staged(self, cf, col0, key, stat, errmsg, xs, xd, ys, yd)
      end if
    else if (present(xs)) then
      call self%net%forward(xs, ys, stat, errmsg, columns_first=cf)
    else
      call self%net%forward(xd, yd, stat, errmsg, columns_first=cf)
    end if
    if (stat == 0 .and. blend) then
      if (present(ys)) then
        call blend_columns(self, step, cf, n_fb, ys=ys, cs=cs)
      else
        call blend_columns(self, step, cf, n_fb, yd=yd, cd=cd)
      end if
      if (present(n_fallback)) n_fallback = n_fb
    end if
    if (stat == 0 .and. present(targets) .and. self%cfg%online_training) then
      ! a training step changes the weights the other threads are using
      !$ if (omp_in_parallel()) then
      !$   errflg = 1
      !$   errmsg = 'colnn_coupler_run'//scheme_label(self)//': online training changes the '// &
      !$            'network; call _run with targets from one thread (outside the parallel '// &
      !$            'loop over chunks)'
      !$   return
      !$ end if
      nc = size(targets, 2)
      if (cf .or. (present(xs) .and. wp /= sp) .or. (present(xd) .and. wp /= dp)) then
        errflg = 1
        errmsg = 'colnn_coupler_run'//scheme_label(self)//': online training takes inputs '// &
                 'and targets as (features, columns) in the library''s precision ('//wp_name//')'
        return
      end if
      if (self%batchnorm .and. nc < 2) then
        errflg = 1
        errmsg = 'colnn_coupler_run'//scheme_label(self)//': online training of a network '// &
                 'with BatchNormalization needs at least 2 columns a step (a batch of one has '// &
                 'variance 0, and the moving variance it learns decays to 0); this call has 1'
        return
      end if
      call train_step(self, targets, loss, stat, errmsg, xs, xd)
      if (stat == COLNN_ERR_NONFINITE) then
        ! a non-finite target (or loss, or gradient): the trainer left the weights as they
        ! were; the step is skipped and counted, the host goes on
        self%online_skipped = self%online_skipped + 1
        stat = 0
        errmsg = ''
      else if (stat == 0) then
        self%online_steps = self%online_steps + 1
        self%online_loss = loss
      end if
    end if
    if (stat /= 0) then
      errflg = 1
      errmsg = 'colnn_coupler_run'//scheme_label(self)//': '//trim(errmsg)
      return
    end if
    call system_clock(t1)
    if (present(xs)) then
      nc = size(xs, merge(1, 2, cf))
    else
      nc = size(xd, merge(1, 2, cf))
    end if
    !$omp atomic
    self%calls = self%calls + 1
    !$omp atomic
    self%columns = self%columns + nc
    !$omp atomic
    self%seconds = self%seconds + real(t1 - t0, dp) / real(rate, dp)
    if (n_fb > 0) then
      !$omp atomic
      self%fallback_columns = self%fallback_columns + n_fb
    end if
  end subroutine run_any

  !> What fallback and ramp need: the host's closure in the outputs' shape, finite inputs (the
  !> network does not check them when it may give non-finite outputs), the step for a ramp.
  subroutine check_closure(self, cf, step, errmsg, errflg, xs, xd, ys, yd, cs, cd)
    class(colnn_scheme_t), intent(in) :: self
    logical, intent(in) :: cf
    integer, intent(in), optional :: step
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    real(sp), intent(in), optional :: xs(:, :), ys(:, :), cs(:, :)
    real(dp), intent(in), optional :: xd(:, :), yd(:, :), cd(:, :)
    integer :: bad(2)
    character(len=:), allocatable :: context, key
    errflg = 1
    errmsg = ''
    context = 'colnn_coupler_run'//scheme_label(self)//': '
    key = 'ramp_steps > 0'
    if (self%cfg%fallback) key = 'fallback = .true.'
    if (.not. (present(cs) .or. present(cd))) then
      errmsg = context//key//' needs the host''s own closure of the columns (closure=)'
      return
    end if
    if (present(ys) .neqv. present(cs)) then
      errmsg = context//'closure must have the kind of outputs'
      return
    end if
    if (present(cs)) then
      if (any(shape(cs) /= shape(ys))) errmsg = context//'closure must have the shape of outputs'
    else
      if (any(shape(cd) /= shape(yd))) errmsg = context//'closure must have the shape of outputs'
    end if
    if (len_trim(errmsg) > 0) return
    if (self%cfg%ramp_steps > 0 .and. .not. present(step)) then
      errmsg = context//'ramp_steps > 0 needs the host''s step (step=)'
      return
    end if
    if (self%cfg%fallback .and. self%cfg%check_finite) then
      bad = 0
      if (present(xs)) then
        if (.not. all(ieee_is_finite(xs))) bad = findloc(ieee_is_finite(xs), .false.)
      else
        if (.not. all(ieee_is_finite(xd))) bad = findloc(ieee_is_finite(xd), .false.)
      end if
      if (bad(1) > 0) then
        if (cf) bad = bad([2, 1])
        errmsg = context//'forward: input feature '//str(bad(1))//' of column '//str(bad(2))// &
                 ' is not finite'
        return
      end if
    end if
    errflg = 0
    errmsg = ''
  end subroutine check_closure

  !> Each column of the chunk: the host's closure where the network's outputs are not finite or
  !> out of bounds (fallback), else the ramp's blend w NN + (1 - w) closure (ramp_steps).
  subroutine blend_columns(self, step, cf, n_fb, ys, yd, cs, cd)
    class(colnn_scheme_t), intent(in) :: self
    integer, intent(in), optional :: step
    logical, intent(in) :: cf
    integer, intent(out) :: n_fb
    real(sp), intent(inout), optional :: ys(:, :)
    real(dp), intent(inout), optional :: yd(:, :)
    real(sp), intent(in), optional :: cs(:, :)
    real(dp), intent(in), optional :: cd(:, :)
    real(dp) :: v(self%n_out), c(self%n_out), w
    integer :: j, nc
    logical :: bad
    n_fb = 0
    w = 1
    if (self%cfg%ramp_steps > 0) w = min(1.0_dp, max(0, step) / real(self%cfg%ramp_steps, dp))
    if (present(ys)) then
      nc = size(ys, merge(1, 2, cf))
    else
      nc = size(yd, merge(1, 2, cf))
    end if
    do j = 1, nc
      call get(j, v, ys, yd)
      bad = .false.
      if (self%cfg%fallback) bad = .not. all(ieee_is_finite(v)) .or. any(v < self%lower) .or. &
                                   any(v > self%upper)
      if (bad) then
        n_fb = n_fb + 1
        call get(j, v, cs, cd)
      else if (w < 1) then
        call get(j, c, cs, cd)
        v = w * v + (1 - w) * c
      else
        cycle
      end if
      if (present(ys)) then
        if (cf) then
          ys(j, :) = real(v, sp)
        else
          ys(:, j) = real(v, sp)
        end if
      else
        if (cf) then
          yd(j, :) = v
        else
          yd(:, j) = v
        end if
      end if
    end do
  contains
    subroutine get(col, out, as, ad)
      integer, intent(in) :: col
      real(dp), intent(out) :: out(:)
      real(sp), intent(in), optional :: as(:, :)
      real(dp), intent(in), optional :: ad(:, :)
      if (present(as)) then
        if (cf) then
          out = real(as(col, :), dp)
        else
          out = real(as(:, col), dp)
        end if
      else
        if (cf) then
          out = ad(col, :)
        else
          out = ad(:, col)
        end if
      end if
    end subroutine get
  end subroutine blend_columns

  !> Writes the scheme's network to `path` (atomically): with online training a checkpoint (the
  !> optimizer and its state, which a later init with online_training continues from), else the
  !> model alone. Not for an ensemble. I/O: call it outside _run, from one thread.
  subroutine scheme_save(self, path, errmsg, errflg)
    class(colnn_scheme_t), intent(in) :: self
    character(len=*), intent(in) :: path
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    type(layer_spec_t) :: training
    integer :: stat
    errmsg = ''
    errflg = 1
    if (.not. self%initialized) then
      errmsg = 'colnn_coupler_save: the scheme is not initialised'
      return
    end if
    if (self%use_ensemble) then
      errmsg = 'colnn_coupler_save'//scheme_label(self)//': an ensemble is not saved (its '// &
               'members are the files it was loaded from)'
      return
    end if
    if (self%cfg%online_training) then
      call self%trainer%describe(training)
      call self%net%save(path, stat, errmsg, training=training)
    else
      call self%net%save(path, stat, errmsg)
    end if
    if (stat /= 0) then
      errmsg = 'colnn_coupler_save'//scheme_label(self)//': '//trim(errmsg)
      return
    end if
    errflg = 0
  end subroutine scheme_save

  !> Online training since init: optimizer steps taken, steps skipped (non-finite), last loss.
  subroutine scheme_online_stats(self, steps, skipped, last_loss)
    class(colnn_scheme_t), intent(in) :: self
    integer(8), intent(out) :: steps, skipped
    real(dp), intent(out) :: last_loss
    steps = self%online_steps
    skipped = self%online_skipped
    last_loss = real(self%online_loss, dp)
  end subroutine scheme_online_stats

  !> Columns that fell back to the host's closure since init (all threads and calls).
  integer(8) function scheme_fallbacks(self)
    class(colnn_scheme_t), intent(in) :: self
    scheme_fallbacks = self%fallback_columns
  end function scheme_fallbacks

  !> Whether _run needs the host's closure (fallback or a ramp is configured).
  logical function scheme_uses_closure(self)
    class(colnn_scheme_t), intent(in) :: self
    scheme_uses_closure = self%initialized .and. (self%cfg%fallback .or. self%cfg%ramp_steps > 0)
  end function scheme_uses_closure

  !> A fallback monitor with the scheme's thresholds (one for each run the host makes).
  function scheme_fallback_monitor(self) result(monitor)
    class(colnn_scheme_t), intent(in) :: self
    type(colnn_fallback_monitor_t) :: monitor
    monitor%max_share = self%cfg%fallback_max_share
    monitor%max_steps = self%cfg%fallback_max_steps
  end function scheme_fallback_monitor

  !> One step's fallback columns out of n_columns (summed over the run's chunks and ranks):
  !> errflg = 1 with the reason when more than max_share fell back at each of the last
  !> max_steps steps. Nothing is stopped: the host decides what a failed run does.
  subroutine monitor_update(self, n_fallback, n_columns, errmsg, errflg)
    class(colnn_fallback_monitor_t), intent(inout) :: self
    integer(8), intent(in) :: n_fallback, n_columns
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    real :: share
    errmsg = ''
    errflg = 0
    share = 0
    if (n_columns > 0) share = real(n_fallback) / real(n_columns)
    self%total = self%total + n_fallback
    if (n_fallback > 0) self%steps_with_fallback = self%steps_with_fallback + 1
    self%max_step_share = max(self%max_step_share, share)
    if (share > self%max_share) then
      self%over = self%over + 1
    else
      self%over = 0
    end if
    if (self%over >= self%max_steps) then
      errflg = 1
      errmsg = 'more than fallback_max_share = '//trim(real_text(self%max_share))// &
               ' of the columns fell back to the host''s closure at each of '// &
               str(self%over)//' steps (fallback_max_steps = '//str(self%max_steps)// &
               '; this step '//str(int(n_fallback))//' of '//str(int(n_columns))//')'
    end if
  end subroutine monitor_update

  !> What the scheme's successful _run calls cost since init: their number, the columns they
  !> took, and their seconds (summed over calls; over threads too when a host calls from
  !> several at once, so compare with the host's CPU time rather than its wall time then).
  subroutine scheme_timers(self, calls, columns, seconds)
    class(colnn_scheme_t), intent(in) :: self
    integer(8), intent(out) :: calls, columns
    real(dp), intent(out) :: seconds
    calls = self%calls
    columns = self%columns
    seconds = self%seconds
  end subroutine scheme_timers

  !> One optimizer step on the host's inputs, which are in wp (checked by the caller).
  subroutine train_step(self, targets, loss, stat, errmsg, xs, xd)
    class(colnn_scheme_t), intent(inout) :: self
    real(wp), intent(in) :: targets(:, :)
    real(wp), intent(out) :: loss
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(sp), intent(in), optional :: xs(:, :)
    real(dp), intent(in), optional :: xd(:, :)
#ifdef COLNN_DOUBLE
    call self%trainer%online_step(self%net, xd, targets, loss, stat, errmsg)
#else
    call self%trainer%online_step(self%net, xs, targets, loss, stat, errmsg)
#endif
  end subroutine train_step

  subroutine ensemble_native(self, col0, key, stat, errmsg, xs, xd, ys, yd)
    class(colnn_scheme_t), intent(inout) :: self
    integer(8), intent(in) :: col0, key
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(sp), intent(in), optional :: xs(:, :)
    real(dp), intent(in), optional :: xd(:, :)
    real(sp), intent(inout), optional :: ys(:, :)
    real(dp), intent(inout), optional :: yd(:, :)
#ifdef COLNN_DOUBLE
    if (key >= 0) then
      call self%ens%forward(xd, yd, stat, errmsg, column_offset=col0, step=key)
    else
      call self%ens%forward(xd, yd, stat, errmsg, column_offset=col0)
    end if
#else
    if (key >= 0) then
      call self%ens%forward(xs, ys, stat, errmsg, column_offset=col0, step=key)
    else
      call self%ens%forward(xs, ys, stat, errmsg, column_offset=col0)
    end if
#endif
  end subroutine ensemble_native

  !> An ensemble run on a host's other kind or layout, through the thread's staging buffers.
  subroutine ensemble_staged(self, cf, col0, key, stat, errmsg, xs, xd, ys, yd)
    class(colnn_scheme_t), intent(inout) :: self
    logical, intent(in) :: cf
    integer(8), intent(in) :: col0, key
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(sp), intent(in), optional :: xs(:, :)
    real(dp), intent(in), optional :: xd(:, :)
    real(sp), intent(inout), optional :: ys(:, :)
    real(dp), intent(inout), optional :: yd(:, :)
    integer :: nc, ni, no, fx, fy, ny
    ni = self%n_in
    no = self%n_out
    if (present(xs)) then
      fx = size(xs, merge(2, 1, cf)); nc = size(xs, merge(1, 2, cf))
    else
      fx = size(xd, merge(2, 1, cf)); nc = size(xd, merge(1, 2, cf))
    end if
    if (present(ys)) then
      fy = size(ys, merge(2, 1, cf)); ny = size(ys, merge(1, 2, cf))
    else
      fy = size(yd, merge(2, 1, cf)); ny = size(yd, merge(1, 2, cf))
    end if
    if (fx /= ni .or. fy /= no .or. ny /= nc .or. nc < 1) then
      stat = 3
      errmsg = 'inputs must be '//shape_text(ni, nc, cf)//' and outputs '// &
               shape_text(no, nc, cf)//', got '//shape_text(fx, nc, cf)//' and '// &
               shape_text(fy, ny, cf)
      return
    end if
    call reserve(stage_in, ni * nc)
    call reserve(stage_out, no * nc)
    call stage(stage_in, ni, nc)
    call ensemble_on(stage_in, stage_out, ni, no, nc)
    if (stat /= 0) return
    call unstage(no, nc)
  contains
    subroutine ensemble_on(x, y, n_x, n_y, m)
      integer, intent(in) :: n_x, n_y, m
      real(wp), intent(in) :: x(n_x, m)
      real(wp), intent(out) :: y(n_y, m)
      if (key >= 0) then
        call self%ens%forward(x, y, stat, errmsg, column_offset=col0, step=key)
      else
        call self%ens%forward(x, y, stat, errmsg, column_offset=col0)
      end if
    end subroutine ensemble_on
    subroutine stage(buf, n, m)
      real(wp), intent(out) :: buf(n, m)
      integer, intent(in) :: n, m
      if (present(xs)) then
        if (cf) then
          buf = real(transpose(xs), wp)
        else
          buf = real(xs, wp)
        end if
      else
        if (cf) then
          buf = real(transpose(xd), wp)
        else
          buf = real(xd, wp)
        end if
      end if
    end subroutine stage
    subroutine unstage(n, m)
      integer, intent(in) :: n, m
      call unstage_from(stage_out, n, m)
    end subroutine unstage
    subroutine unstage_from(buf, n, m)
      integer, intent(in) :: n, m
      real(wp), intent(in) :: buf(n, m)
      if (present(ys)) then
        if (cf) then
          ys = real(transpose(buf), sp)
        else
          ys = real(buf, sp)
        end if
      else
        if (cf) then
          yd = real(transpose(buf), dp)
        else
          yd = real(buf, dp)
        end if
      end if
    end subroutine unstage_from
  end subroutine ensemble_staged

  subroutine reserve(buf, n)
    real(wp), allocatable, intent(inout) :: buf(:)
    integer, intent(in) :: n
    if (allocated(buf)) then
      if (size(buf) >= n) return
      deallocate (buf)
    end if
    allocate (buf(n))
  end subroutine reserve

  pure function shape_text(features, columns, cf) result(s)
    integer, intent(in) :: features, columns
    logical, intent(in) :: cf
    character(len=:), allocatable :: s
    if (cf) then
      s = '('//str(columns)//', '//str(features)//')'
    else
      s = '('//str(features)//', '//str(columns)//')'
    end if
  end function shape_text

  subroutine scheme_finalize(self, errmsg, errflg)
    class(colnn_scheme_t), intent(inout) :: self
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    errmsg = ''
    errflg = 0
    call release(self)
  end subroutine scheme_finalize

  !> Features the initialised scheme takes and gives (0, 0 before a successful init).
  subroutine scheme_sizes(self, n_inputs, n_outputs)
    class(colnn_scheme_t), intent(in) :: self
    integer, intent(out) :: n_inputs, n_outputs
    n_inputs = self%n_in
    n_outputs = self%n_out
  end subroutine scheme_sizes

  !> The configuration the scheme was initialised with (for provenance: the model's path).
  function scheme_config(self) result(config)
    class(colnn_scheme_t), intent(in) :: self
    type(colnn_coupler_config_t) :: config
    config = self%cfg
  end function scheme_config

  !> " (scheme 'NAME')" for messages, '' for an unnamed scheme.
  function scheme_label(self) result(s)
    class(colnn_scheme_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = ''
    if (len_trim(self%cfg%name) > 0) s = " (scheme '"//trim(self%cfg%name)//"')"
  end function scheme_label

  subroutine scheme_final(self)
    type(colnn_scheme_t), intent(inout) :: self
    call release(self)
  end subroutine scheme_final

  subroutine release(self)
    class(colnn_scheme_t), intent(inout) :: self
    if (self%initialized) call unregister_name(self%cfg%name)
    call self%net%destroy()
    call self%ens%destroy()
    self%initialized = .false.
    self%n_in = 0
    self%n_out = 0
  end subroutine release

  logical function name_is_live(name)
    character(len=*), intent(in) :: name
    integer :: k
    name_is_live = .false.
    if (.not. allocated(live_names)) return
    do k = 1, size(live_names)
      if (live_names(k)%used .and. live_names(k)%s == name) name_is_live = .true.
    end do
  end function name_is_live

  subroutine register_name(name)
    character(len=*), intent(in) :: name
    type(name_t), allocatable :: grown(:)
    integer :: k
    if (.not. allocated(live_names)) allocate (live_names(4))
    k = findloc(live_names%used, .false., dim=1)
    if (k == 0) then
      allocate (grown(2 * size(live_names)))
      grown(1:size(live_names)) = live_names
      k = size(live_names) + 1
      call move_alloc(grown, live_names)
    end if
    live_names(k) = name_t(name, .true.)
  end subroutine register_name

  subroutine unregister_name(name)
    character(len=*), intent(in) :: name
    integer :: k
    if (.not. allocated(live_names)) return
    do k = 1, size(live_names)
      if (live_names(k)%used .and. live_names(k)%s == name) then
        live_names(k)%used = .false.
        return
      end if
    end do
  end subroutine unregister_name


  ! ------------------------------------------------------------------------------------------
  ! The module-level scheme: one per program, as CCPP calls a scheme.

  !> Reads the namelist, loads the model, checks it maps n_inputs host features to n_outputs.
  subroutine colnn_coupler_init(config_file, n_inputs, n_outputs, errmsg, errflg, name, &
                                input_vars, output_vars, host_closure)
    character(len=*), intent(in) :: config_file
    integer, intent(in) :: n_inputs, n_outputs
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    character(len=*), intent(in), optional :: name
    character(len=*), intent(in), optional :: input_vars(:), output_vars(:)
    logical, intent(in), optional :: host_closure
    call default_scheme%init(config_file, n_inputs, n_outputs, errmsg, errflg, name, &
                             input_vars, output_vars, host_closure)
  end subroutine colnn_coupler_init

  !> See colnn_scheme_t%run.
  subroutine colnn_coupler_run_sp(inputs, outputs, errmsg, errflg, column_offset, targets, step, &
                                  columns_first, closure, n_fallback)
    real(sp), intent(in) :: inputs(:, :)
    real(sp), intent(out) :: outputs(:, :)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer, intent(in), optional :: column_offset
    real(wp), intent(in), optional :: targets(:, :)
    integer, intent(in), optional :: step
    logical, intent(in), optional :: columns_first
    real(sp), intent(in), optional :: closure(:, :)
    integer, intent(out), optional :: n_fallback
    call default_scheme%run(inputs, outputs, errmsg, errflg, column_offset, targets, step, &
                            columns_first, closure, n_fallback)
  end subroutine colnn_coupler_run_sp

  subroutine colnn_coupler_run_dp(inputs, outputs, errmsg, errflg, column_offset, targets, step, &
                                  columns_first, closure, n_fallback)
    real(dp), intent(in) :: inputs(:, :)
    real(dp), intent(out) :: outputs(:, :)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer, intent(in), optional :: column_offset
    real(wp), intent(in), optional :: targets(:, :)
    integer, intent(in), optional :: step
    logical, intent(in), optional :: columns_first
    real(dp), intent(in), optional :: closure(:, :)
    integer, intent(out), optional :: n_fallback
    call default_scheme%run(inputs, outputs, errmsg, errflg, column_offset, targets, step, &
                            columns_first, closure, n_fallback)
  end subroutine colnn_coupler_run_dp

  subroutine colnn_coupler_finalize(errmsg, errflg)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call default_scheme%finalize(errmsg, errflg)
  end subroutine colnn_coupler_finalize

  !> Features the initialised scheme takes and gives (0, 0 before a successful init).
  subroutine colnn_coupler_sizes(n_inputs, n_outputs)
    integer, intent(out) :: n_inputs, n_outputs
    call default_scheme%sizes(n_inputs, n_outputs)
  end subroutine colnn_coupler_sizes

  !> See colnn_scheme_t%timers.
  subroutine colnn_coupler_timers(calls, columns, seconds)
    integer(8), intent(out) :: calls, columns
    real(dp), intent(out) :: seconds
    call default_scheme%timers(calls, columns, seconds)
  end subroutine colnn_coupler_timers

  !> See colnn_scheme_t%save.
  subroutine colnn_coupler_save(path, errmsg, errflg)
    character(len=*), intent(in) :: path
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call default_scheme%save(path, errmsg, errflg)
  end subroutine colnn_coupler_save

  !> See colnn_scheme_t%online_stats.
  subroutine colnn_coupler_online_stats(steps, skipped, last_loss)
    integer(8), intent(out) :: steps, skipped
    real(dp), intent(out) :: last_loss
    call default_scheme%online_stats(steps, skipped, last_loss)
  end subroutine colnn_coupler_online_stats

  !> See colnn_scheme_t%fallbacks.
  integer(8) function colnn_coupler_fallbacks()
    colnn_coupler_fallbacks = default_scheme%fallbacks()
  end function colnn_coupler_fallbacks

  !> See colnn_scheme_t%fallback_monitor.
  function colnn_coupler_fallback_monitor() result(monitor)
    type(colnn_fallback_monitor_t) :: monitor
    monitor = default_scheme%fallback_monitor()
  end function colnn_coupler_fallback_monitor

  !> See colnn_scheme_t%uses_closure.
  logical function colnn_coupler_uses_closure()
    colnn_coupler_uses_closure = default_scheme%uses_closure()
  end function colnn_coupler_uses_closure

  !> The configuration the scheme was initialised with (for provenance: the model's path).
  subroutine colnn_coupler_get_config(config)
    type(colnn_coupler_config_t), intent(out) :: config
    config = default_scheme%config()
  end subroutine colnn_coupler_get_config
end module colnn_coupler
