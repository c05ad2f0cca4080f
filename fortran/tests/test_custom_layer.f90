! A layer defined outside the library (here, in the program's own module), registered under a
! type name and used from a model file between built-in layers.
module my_layers
  use colnn
  implicit none
  private
  public :: scale_shift_t, make_scale_shift

  !> y = factor * x + shift (per feature)
  type, extends(layer_t) :: scale_shift_t
    real(wp) :: factor = 1
    real(wp), allocatable :: shift(:)
  contains
    procedure :: init => ss_init
    procedure :: forward => ss_forward
    procedure :: describe => ss_describe
    procedure :: type_name => ss_type_name
  end type scale_shift_t

contains

  subroutine make_scale_shift(layer)
    class(layer_t), allocatable, intent(out) :: layer
    allocate (scale_shift_t :: layer)
  end subroutine make_scale_shift

  function ss_type_name(self) result(name)
    class(scale_shift_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'scale_shift'
  end function ss_type_name

  subroutine ss_init(self, spec, n_in, stat, errmsg)
    class(scale_shift_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_real('factor', self%factor, stat, errmsg); if (stat /= 0) return
    call spec%get_vector('shift', n_in, self%shift, stat, errmsg); if (stat /= 0) return
    call spec%check_all_used(stat, errmsg)
  end subroutine ss_init

  subroutine ss_forward(self, nc, x, y)
    class(scale_shift_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    integer :: j
    do j = 1, nc
      y(:, j) = self%factor * x(:, j) + self%shift
    end do
  end subroutine ss_forward

  subroutine ss_describe(self, spec)
    class(scale_shift_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_real('factor', self%factor)
    call spec%set_tensor_1d('shift', self%shift)
  end subroutine ss_describe
end module my_layers

program test_custom_layer
  use colnn
  use my_layers, only: make_scale_shift
  implicit none
  type(network_t) :: net, net2
  integer :: stat, u
  character(len=ERRMSG_LEN) :: msg
  real(wp) :: x(2, 3), y(2, 3), y2(2, 3), expected(2, 3)
  character(len=1), parameter :: nl = new_line('a')

  open (newunit=u, file='custom.colnn', status='replace', access='stream', form='unformatted')
  write (u) 'colnn 1'//nl//'precision float32'//nl//'inputs 2'//nl//'outputs 2'//nl//'layers 3'//nl// &
    'layer dense'//nl//'name d'//nl//'units 2'//nl//'use_bias false'//nl//'activation linear'//nl// &
    'tensor kernel 2 2'//nl//'1 2'//nl//'3 4'//nl//'end'//nl// &
    'layer scale_shift'//nl//'name mine'//nl//'factor 0.5'//nl//'tensor shift 2'//nl//'10 -10'//nl//'end'//nl// &
    'layer activation'//nl//'name a'//nl//'activation relu'//nl//'end'//nl
  close (u)

  ! before registration the type is unknown: a clear error, not a fallback
  call net%load('custom.colnn', stat, msg)
  if (stat /= COLNN_ERR_UNSUPPORTED .or. index(msg, 'scale_shift') == 0) then
    print '(a)', 'FAIL: unregistered custom layer should be refused: '//trim(msg)
    error stop 1
  end if
  call register_layer('scale_shift', make_scale_shift, stat, msg)
  if (stat /= 0) error stop 'register failed'
  call register_layer('dense', make_scale_shift, stat, msg)
  if (stat == 0) error stop 'replacing a built-in type must be refused'

  call net%load('custom.colnn', stat, msg)
  if (stat /= 0) then
    print '(a)', 'FAIL: '//trim(msg)
    error stop 1
  end if
  x = reshape([1.0_wp, 2.0_wp, -3.0_wp, 0.5_wp, 40.0_wp, -1.0_wp], [2, 3])
  call net%forward(x, y, stat, msg)
  ! d: y1 = x1 + 3 x2, y2 = 2 x1 + 4 x2 (kernel rows are inputs)
  expected(1, :) = max(0.5_wp * (x(1, :) + 3 * x(2, :)) + 10, 0.0_wp)
  expected(2, :) = max(0.5_wp * (2 * x(1, :) + 4 * x(2, :)) - 10, 0.0_wp)
  if (stat /= 0 .or. maxval(abs(y - expected)) > 1e-5) then
    print '(a)', 'FAIL: custom layer output'
    print *, y
    print *, expected
    error stop 1
  end if
  call net%save('custom_saved.colnn', stat, msg)
  call net2%load('custom_saved.colnn', stat, msg)
  call net2%forward(x, y2, stat, msg)
  if (stat /= 0 .or. any(y2 /= y)) error stop 'FAIL: custom layer save/reload'
  ! the files it wrote go (fpm test runs in the project's root)
  open (newunit=u, file='custom.colnn', status='old')
  close (u, status='delete')
  open (newunit=u, file='custom_saved.colnn', status='old')
  close (u, status='delete')
  print '(a)', 'test_custom_layer: all passed'
end program test_custom_layer
